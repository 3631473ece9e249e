//! The plain configuration types the rest of the proxy reads — [`Secret`], [`Limits`],
//! [`ResilienceConfig`], [`UpstreamConfig`] and [`DatabaseConfig`] — with their built-in
//! defaults. Nothing here knows about YAML or the environment: parsing and layering
//! (in the sibling modules) only fill these in.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

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
/// Default address the proxy listens on (`listen`).
pub(super) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6380));
/// Default upstream `host`.
pub(super) const DEFAULT_HOST: &str = "localhost";
/// Default upstream `port`.
pub(super) const DEFAULT_PORT: u16 = 6379;
/// Default `connect_timeout` and `command_timeout` (when no `timeout` is set either).
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `max_connections` (`pool_size`): exclusive connections per database.
pub(super) const DEFAULT_POOL_SIZE: u32 = 20;
/// Default `mux_connections`: shared multiplexed connections per database.
pub(super) const DEFAULT_MUX_CONNECTIONS: u32 = 1;
/// Default `max_clients`.
pub(super) const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default `auth_timeout`.
pub(super) const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `slowlog_threshold_ms` (Redis's `slowlog-log-slower-than` is 10 ms too).
pub(super) const DEFAULT_SLOWLOG_THRESHOLD: Duration = Duration::from_millis(10);
/// Default `slowlog_max_len` (Redis's `slowlog-max-len`).
pub(super) const DEFAULT_SLOWLOG_MAX_LEN: usize = 128;

/// Default `shutdown_timeout`.
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `upstream_databases` (Redis's default `databases` setting).
pub(super) const DEFAULT_UPSTREAM_DATABASES: u32 = 16;
/// Largest client-facing index (`db`).
pub(super) const MAX_CLIENT_DB: u32 = 9999;

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
    /// Bytes of replies waiting to be written to one client past which the proxy
    /// stops executing that client's requests until it catches up (backpressure;
    /// it reads ahead up to `client_read_ahead`, then stops reading).
    pub client_reply_buffer: usize,
    /// Bytes of a client's requests read ahead, not yet executed, while
    /// backpressure holds its execution back: a client that writes a whole
    /// pipeline before reading any reply (hiredis, Jedis) is not left waiting on
    /// itself, as Redis reads such a pipeline whole (0: none read ahead).
    pub client_read_ahead: usize,
    /// Redis's `client-output-buffer-limit normal`: past these bytes of replies
    /// waiting to be written, the client is disconnected (0: no limit).
    pub client_output_buffer_limit: OutputBufferLimit,
    /// Redis's `maxmemory-clients`: past this many bytes of buffers for all clients
    /// together, the client using the most is disconnected (0: no limit).
    pub max_client_memory: usize,
    /// Not a config key: set in [`Limits::before_auth`], the limits of a client
    /// that has not authenticated yet (the parser then answers with Redis's
    /// `unauthenticated …` errors).
    pub unauthenticated: bool,
}

impl Limits {
    /// What a client may send before it authenticates, as Redis 7 allows: at most
    /// 10 arguments and 16 KiB bulk strings (so nobody can make the proxy buffer a
    /// 512 MiB request without the password).
    pub fn before_auth(&self) -> Limits {
        Limits {
            max_bulk_len: self.max_bulk_len.min(16 * 1024),
            max_args: self.max_args.min(10),
            unauthenticated: true,
            ..self.clone()
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_args: 1024 * 1024,
            max_inline_len: 64 * 1024,
            pubsub_buffer_limit: 32 * 1024 * 1024,
            client_reply_buffer: DEFAULT_CLIENT_REPLY_BUFFER,
            client_read_ahead: DEFAULT_CLIENT_READ_AHEAD,
            client_output_buffer_limit: OutputBufferLimit::default(),
            max_client_memory: 0,
            unauthenticated: false,
        }
    }
}

/// Default `limits.client_reply_buffer`.
pub const DEFAULT_CLIENT_REPLY_BUFFER: usize = 4 * 1024 * 1024;

/// Default `limits.client_read_ahead`.
pub const DEFAULT_CLIENT_READ_AHEAD: usize = 64 * 1024 * 1024;

/// Redis's `client-output-buffer-limit` for one class of clients: a client is
/// disconnected when the replies waiting to be written to it pass `hard` bytes, or
/// stay past `soft` bytes for `soft_seconds`. Zero turns a limit off (Redis's
/// default for normal clients: `0 0 0`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutputBufferLimit {
    /// Bytes past which the client is disconnected at once.
    pub hard: usize,
    /// Bytes past which, for `soft_seconds` on end, the client is disconnected.
    pub soft: usize,
    /// How long the client may stay past `soft`.
    pub soft_seconds: Duration,
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

/// Where and how one database's upstream Redis is reached. Equality compares
/// every setting (the run-time [`Endpoint`](crate::endpoint::Endpoint) always
/// compares equal): a reload keeps a database whose configuration is equal.
#[derive(Debug, Clone, PartialEq)]
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
    /// TLS to the upstream (`tls`, top level or per database); `None`: plain TCP.
    pub tls: Option<Arc<UpstreamTls>>,
    /// The primary name of the database this upstream serves (for log lines;
    /// empty when built with [`UpstreamConfig::new`]).
    pub database: String,
    /// `key_prefix`: added to every key on the way in, removed from keys in
    /// replies (`session::prefix`); `None`: keys pass unchanged.
    pub key_prefix: Option<bytes::Bytes>,
    /// `sentinel`: the primary is found through these sentinels (then `host` and
    /// `port` are unused); `None`: a standalone Redis at `host:port`.
    pub sentinel: Option<Arc<SentinelConfig>>,
    /// `cluster`: a Redis Cluster, learnt from these seed nodes (then `host`,
    /// `port` and `db` are unused: a cluster has only db 0); `None`: not a cluster.
    pub cluster: Option<Arc<ClusterConfig>>,
    /// A connection to a cluster replica that serves reads (`read_from: replica`):
    /// its setup sends `READONLY`. Set by the cluster router, never by the YAML.
    pub replica_reads: bool,
    /// Opened for a client's own login (`auth_passthrough`), with its user's
    /// credentials: the setup sends no closing `PING` (see `upstream::connect`).
    /// Set by the session, never by the YAML.
    pub client_login: bool,
    /// Where the upstream is now (the sentinel-resolved primary), shared by every
    /// clone of this configuration.
    pub endpoint: crate::endpoint::Endpoint,
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
            tls: None,
            database: String::new(),
            key_prefix: None,
            sentinel: None,
            cluster: None,
            replica_reads: false,
            client_login: false,
            endpoint: crate::endpoint::Endpoint::new(),
        }
    }

    /// Whether `other` reaches the same upstream as the same user: host, port (or
    /// the same sentinels and master), credentials, upstream db and TLS. The one
    /// comparison of upstream identity (a reload keeps a database's breaker and
    /// statistics only when it holds; db indexes translate between databases on
    /// the same server): extend it here when an upstream gains identity settings.
    pub fn same_endpoint(&self, other: &UpstreamConfig) -> bool {
        self.same_server(other) && self.db == other.db && self.tls == other.tls
    }

    /// Whether `other` is the same server, logged in as the same user (its db may
    /// differ).
    pub fn same_server(&self, other: &UpstreamConfig) -> bool {
        self.same_redis(other) && self.username == other.username && self.password == other.password
    }

    /// Whether `other` is the same Redis server (or Sentinel master, or cluster),
    /// whoever logs in to it: what is server-wide (`CLIENT PAUSE`, client ids)
    /// holds for both.
    pub fn same_redis(&self, other: &UpstreamConfig) -> bool {
        self.host == other.host
            && self.port == other.port
            && self.sentinel == other.sentinel
            && self.cluster == other.cluster
    }

    /// `host:port` as text, for reports. For a Sentinel-backed upstream, the current
    /// primary (`sentinel master <name>` while none is known).
    pub fn address(&self) -> String {
        if let Some(c) = &self.cluster {
            let seeds: Vec<String> = c.nodes.iter().map(|(h, p)| format!("{h}:{p}")).collect();
            return format!("cluster {}", seeds.join(","));
        }
        match &self.sentinel {
            None => format!("{}:{}", self.host, self.port),
            Some(s) => match self.endpoint.current() {
                Some((host, port, _)) => format!("{host}:{port}"),
                None => format!("sentinel master {}", s.master),
            },
        }
    }
}

/// A Sentinel-backed upstream (YAML `sentinel`).
#[derive(Debug, Clone, PartialEq)]
pub struct SentinelConfig {
    /// The sentinels, asked in this order (`nodes`).
    pub nodes: Vec<(String, u16)>,
    /// The name the sentinels monitor the primary under (`master`).
    pub master: String,
    /// The sentinels' ACL user, if any (`username`).
    pub username: Option<String>,
    /// The sentinels' password (`password`; not the data connections' one).
    pub password: Option<Secret>,
    /// TLS to the sentinels (`tls`, as an upstream's `tls`; not the data
    /// connections' one). `None`: plain TCP.
    pub tls: Option<Arc<UpstreamTls>>,
}

/// Which node of a shard serves read-only commands (YAML `cluster.read_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadFrom {
    /// The primary serves everything (the default).
    #[default]
    Primary,
    /// Read-only commands go to a replica of the shard (`READONLY` is sent on
    /// those connections); writes, and reads with no replica online, to the primary.
    Replica,
}

/// A Redis Cluster upstream (YAML `cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Seed nodes, asked in this order for the slot map (`nodes`).
    pub nodes: Vec<(String, u16)>,
    /// Where read-only commands go (`read_from`: `primary` or `replica`).
    pub read_from: ReadFrom,
}

/// One client-facing database.
#[derive(Debug, Clone, PartialEq)]
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

/// TLS to an upstream (YAML `tls`, at the top level or in a database; `tls: null`
/// in a database means plain TCP there).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// CA certificates the server's certificate must chain to (`ca_file`; without
    /// it, the system's CA bundle).
    pub ca_file: Option<PathBuf>,
    /// Client certificate, for servers that require one (`cert_file`, with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (`key_file`).
    pub key_file: Option<PathBuf>,
    /// The name the server's certificate must be valid for (`server_name`; default:
    /// the upstream `host`).
    pub server_name: Option<String>,
    /// Accept any server certificate (`insecure_skip_verify`; logged as a warning
    /// at start). Encrypts but does not authenticate the server.
    pub insecure_skip_verify: bool,
    /// The rustls configuration built from the files, shared by every connection.
    pub client_config: Arc<rustls::ClientConfig>,
}

impl UpstreamTls {
    /// Loads the files and builds the client configuration.
    pub fn new(
        ca_file: Option<PathBuf>,
        client_cert: Option<(PathBuf, PathBuf)>,
        server_name: Option<String>,
        insecure_skip_verify: bool,
    ) -> Result<UpstreamTls, crate::tls::Failure> {
        let client_config = crate::tls::client_config(
            ca_file.as_deref(),
            client_cert
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            insecure_skip_verify,
        )?;
        let (cert_file, key_file) = client_cert.unzip();
        Ok(UpstreamTls {
            ca_file,
            cert_file,
            key_file,
            server_name,
            insecure_skip_verify,
            client_config,
        })
    }
}

impl PartialEq for UpstreamTls {
    /// The settings (not the loaded configuration) are compared.
    fn eq(&self, other: &Self) -> bool {
        self.ca_file == other.ca_file
            && self.cert_file == other.cert_file
            && self.key_file == other.key_file
            && self.server_name == other.server_name
            && self.insecure_skip_verify == other.insecure_skip_verify
    }
}

/// The TLS listener for clients (YAML `client_tls`), served next to the plain one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientTls {
    /// Where it listens (`listen`, default `127.0.0.1:6390`).
    pub listen: SocketAddr,
    /// The proxy's certificate chain (`cert_file`, PEM; re-read when it changes).
    pub cert_file: PathBuf,
    /// Its private key (`key_file`, PEM).
    pub key_file: PathBuf,
    /// With `ca_file`, clients must present a certificate signed by this CA (mTLS).
    pub ca_file: Option<PathBuf>,
}

/// Default `client_tls.listen`.
pub(super) const DEFAULT_TLS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6390));
