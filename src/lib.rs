//! # redis-sidecar
//!
//! A sidecar TCP proxy that speaks RESP. Unmodified Redis clients point at
//! `localhost:6380` and get per-database upstream pools and routing, circuit
//! breaking, safe retries, timeouts, health probes, statistics and metrics.
//!
//! ## Layout
//!
//! Data flows one way, top to bottom; a module never imports one above it.
//!
//! ```text
//! main.rs        clap flags -> Config::load -> tracing -> Proxy::start -> signals
//! server.rs      listeners (plain, client_tls, unixsocket): accept loop, TLS handshake,
//!                connection limit, graceful shutdown; configuration reload
//!                (validate, bind moved listeners, publish the next snapshot)
//! session/       one client, as a state machine; replies back in order; an idle
//!                one parks (only its socket's readability awaited) until bytes arrive
//!   mode.rs      the connection mode (shared, exclusive, private, subscribed)
//!   dispatch.rs  parse, classify once, runs of requests, where each one goes
//!   queue.rs     the FIFO of replies; upstream failures rendered once; the outbox
//!   memory.rs    backpressure, output buffer limits, the client's memory
//!   exclusive.rs MULTI/WATCH on a held connection, auth_passthrough login
//!   follow.rs    cluster: an exclusive connection follows -MOVED/-ASK of its slot
//!   pubsub.rs    subscribed sessions: streaming, counts, barrier; sharded
//!                subscriptions follow their slot on a cluster
//!   tracking.rs  CLIENT TRACKING: the tracking connection, pushes, REDIRECT ids
//!   stand_in.rs  the connection a REDIRECT named, kept for as long as the session
//!   local.rs     commands the proxy answers itself (SELECT, AUTH, HELLO, CLIENT …)
//!   reload.rs    moving to the configuration snapshot a reload published
//!   prefix.rs    key_prefix: keys prefixed on the way in, replies unprefixed,
//!                DBSIZE/FLUSHDB/RANDOMKEY over SCAN, refusals
//! admin.rs       PROXY INFO / HEALTH / STATS / CLIENTS / SLOWLOG / LOGLEVEL /
//!                RESETSTATS / CIRCUIT (RELOAD is sent to the server)
//! check.rs       `redis-sidecar check` and PROXY CHECK: migration readiness of
//!                every database, on connections of its own
//! acl.rs         `redis-sidecar acl`: the ACL SETUSER line matching deny_commands
//! metrics.rs     Prometheus /metrics (read from the same counters at scrape time);
//!                the HTTP responder on metrics_listen, which also serves status/
//! status/        the live status page (GET /, /status.json); mod.rs: the sampler
//!                (every 5 s, 10 min kept, reads only) and the JSON
//!   history.rs   one database's ring of samples: rates and windowed p50/p99 from
//!                differences of the cumulative counters and histogram
//!   page.rs      the self-contained HTML page with inline SVG charts
//! context.rs     what sessions share: the config + router snapshot (replaced whole
//!                by a reload), client table, counters
//! clients.rs     the table of client sessions (CLIENT LIST / KILL / UNBLOCK,
//!                TRACKING REDIRECT targets); signals to sessions (kill, shutdown,
//!                reload) and the sweep that parks idle ones
//! slowlog.rs     PROXY SLOWLOG: slow batches, newest first, no argument values
//! publish_order.rs  subscriptions before publishes across clients: a PUBLISH
//!                waits (bounded) for subscriber connections still being opened
//! limits.rs      RLIMIT_NOFILE vs max_clients (raised at start, or max_clients
//!                lowered), local exhaustion vs upstream failure, warning throttle
//! router.rs      client db index -> Database (slots, pools, breaker, health, stats)
//! cluster/       Redis Cluster upstreams: slot.rs key -> hash slot (CRC16, hash
//!                tags); map.rs the slot map from CLUSTER SHARDS/SLOTS; plan.rs where a
//!                request goes (a slot, every primary, split per slot, SCAN, refused);
//!                merge.rs parts' replies into one, redirects read; info.rs INFO's
//!                keyspace summed over the primaries; order.rs each
//!                session's batches in order across redirects and map changes;
//!                client.rs the nodes' connections, a one-node batch sent whole (a
//!                redirect diverted back), others split per node, redirects followed
//! resilience/    breaker, backoff, per-command latency stats (no I/O)
//! upstream/      connection setup (TCP, TLS, AUTH/HELLO/SELECT), shared multiplexed slots
//!                (which make the retries, in order, pass large replies on
//!                in parts, and say when a long script or a paused write holds
//!                them up), exclusive bb8-pooled connections (checked out in
//!                request order), subscriber and out-of-band connections, probes;
//!                frames.rs is the one reader of every reply stream;
//!                sentinel.rs finds the primary through Sentinel and follows failovers;
//!                satellites.rs a cluster subscriber's keyspace notifications and
//!                MONITOR from every primary
//! command/       command classification (byte-literal match), the command
//!                table generated from Redis's metadata (flags, key specs,
//!                read-only), and the Descriptor each request is classified into
//!                once; keys.rs: where a request's key arguments are (key specs)
//! protocol/      request parser (multibulk + inline) and reply framing, both
//!                resumable across reads; value.rs decodes the few small replies
//!                the proxy reads itself (sentinel, cluster slot map)
//! config/        YAML config -> Config (mod.rs: loading, the --check-config report)
//!   types.rs     the config structs and their built-in defaults
//!   yaml.rs      the YAML tree (keeps duplicates, order) and key path -> line lookup
//!   fields.rs    checked mappings (unknown keys, "did you mean"), value parsers
//!                (host:port node lists shared by sentinel and cluster)
//!   layer.rs     one level's upstream settings (top level or one database)
//!   env.rs       AUTOBOT_REDIS_* and REDIS_SIDECAR_* environment overrides
//!   resolve.rs   top-level keys, aliases, per-database upstreams, start database
//!   tls.rs       `tls` (upstream) and `client_tls`: files loaded and checked at load
//!   sentinel.rs  `sentinel` (nodes, master, the sentinels' credentials)
//!   cluster.rs   `cluster` (seed nodes, read_from)
//!   error.rs     ConfigError (file, key path, line) and internal failures
//! stats.rs       lock-free counters
//! endpoint.rs    where a database's upstream is now (the Sentinel-resolved primary,
//!                its generation), shared by all its connections; what it says it is
//!                (HELLO); until when a CLIENT PAUSE holds its writes; no I/O
//! logging.rs     PROXY LOGLEVEL: the reloadable log filter the binary installs
//! tls.rs         rustls configurations from PEM files (client listener, reloaded
//!                when the files change; upstream connections)
//! transport.rs   Stream: plain TCP, TLS or (clients) a Unix socket, for
//!                sessions and upstream connections
//! busy_poll.rs   after reads, the runtime polls instead of sleeping for a short
//!                window (kicked by sessions and shared connections; a leaf)
//! ```
#![forbid(unsafe_code)]

pub mod acl;
pub mod admin;
pub mod busy_poll;
pub mod check;
pub mod clients;
pub mod cluster;
pub mod command;
pub mod config;
pub mod context;
pub mod endpoint;
pub mod limits;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod publish_order;
pub mod resilience;
pub mod router;
pub mod server;
pub mod session;
pub mod slowlog;

pub mod stats;
pub mod status;
pub mod tls;
pub mod transport;
pub mod upstream;
