//! Prometheus metrics at `GET /metrics` on `metrics_listen`, and the live status
//! page (`GET /`, `GET /status.json`, see [`crate::status`]).
//!
//! The figures are the ones `PROXY INFO`/`HEALTH`/`STATS` report, read from the
//! proxy's atomics at scrape time by a prometheus-client [`Collector`] — nothing is
//! recorded twice and the data path pays nothing for the exporter. The HTTP side is
//! a minimal HTTP/1.1 responder (one request per connection, bounded in size and
//! time), enough for Prometheus' scraper and `curl`.
//!
//! Metric names (all prefixed `redis_sidecar_`), with labels:
//!
//! | metric | type | labels |
//! |---|---|---|
//! Counters get the `_total` suffix in the output (OpenMetrics), e.g.
//! `redis_sidecar_commands_total{db="main",command="get",outcome="succeeded"}`.
//!
//! | `clients_connected` | gauge | |
//! | `client_connections` | counter | |
//! | `client_connections_rejected` | counter | |
//! | `protocol_errors` | counter | |
//! | `clients_evicted` | counter | `reason` = output_buffer / max_client_memory |
//! | `clients_memory_bytes` | gauge | |
//! | `commands` | counter | `db`, `command`, `outcome` = succeeded / failed / rejected |
//! | `command_retries` | counter | `db`, `command` |
//! | `command_timeouts` | counter | `db`, `command` |
//! | `command_latency_seconds` | gauge | `db`, `command`, `quantile` = 0.5 / 0.9 / 0.99 / 1 (max) |
//! | `command_latency_ewma_seconds` | gauge | `db`, `command` |
//! | `circuit_state` | gauge | `db` (0 closed, 1 half-open, 2 open) |
//! | `circuit_trips` | counter | `db` |
//! | `circuit_rejected` | counter | `db` |
//! | `upstream_healthy` | gauge | `db` (last health probe 1/0) |
//! | `health_probe_latency_seconds` | gauge | `db` |
//! | `health_probe_failures_total` | counter | `db` (failed probes since start) |
//! | `upstream_connections` | gauge | `db`, `kind` = shared / pool |
//! | `upstream_connect_failures` | counter | `db` |
//! | `config_reloads` | counter | |
//! | `config_reload_failures` | counter | |
//! | `config_loaded_timestamp_seconds` | gauge | |
//!
//! `command` is the lower-case command name (`config_get` for subcommands, `all`
//! for the aggregate, `other` for commands not in the table).

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::command::command_name;
use crate::context::Context;
use crate::resilience::{CommandStats, State};
use crate::stats::get;
use crate::status::{self, History};

/// Reads the proxy's counters at scrape time.
#[derive(Debug)]
struct ProxyCollector {
    ctx: Arc<Context>,
}

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

fn gauge(v: f64) -> ConstGauge<f64> {
    ConstGauge::new(v)
}

impl Collector for ProxyCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ctx = &self.ctx;
        let st = &ctx.stats;
        let none = || Labels::new();
        family(
            &mut encoder,
            "redis_sidecar_clients_connected",
            "Client connections open now",
            MetricType::Gauge,
            vec![(none(), gauge(get(&st.connected_clients) as f64))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_client_connections",
            "Client connections accepted",
            MetricType::Counter,
            vec![(none(), counter(get(&st.total_connections)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_client_connections_rejected",
            "Client connections refused over max_clients",
            MetricType::Counter,
            vec![(none(), counter(get(&st.rejected_connections)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_config_reloads",
            "Configuration reloads applied (SIGHUP, PROXY RELOAD)",
            MetricType::Counter,
            vec![(none(), counter(get(&st.config_reloads)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_config_reload_failures",
            "Configuration reloads refused (nothing changed)",
            MetricType::Counter,
            vec![(none(), counter(get(&st.config_reload_failures)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_config_loaded_timestamp_seconds",
            "When the configuration in force was loaded (Unix time)",
            MetricType::Gauge,
            vec![(none(), gauge(ctx.live().loaded_at as f64))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_protocol_errors",
            "Malformed client requests",
            MetricType::Counter,
            vec![(none(), counter(get(&st.protocol_errors)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_auth_failures",
            "AUTH attempts refused (client_password)",
            MetricType::Counter,
            vec![(none(), counter(get(&st.auth_failures)))],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_clients_evicted",
            "Clients closed past client_output_buffer_limit (output_buffer) or max_client_memory",
            MetricType::Counter,
            vec![
                (
                    vec![("reason", "output_buffer".to_string())],
                    counter(get(&st.output_buffer_disconnections)),
                ),
                (
                    vec![("reason", "max_client_memory".to_string())],
                    counter(get(&st.evicted_clients)),
                ),
            ],
        )?;
        family(
            &mut encoder,
            "redis_sidecar_clients_memory_bytes",
            "Bytes of client buffers (read buffers and replies waiting to be written)",
            MetricType::Gauge,
            vec![(none(), gauge(ctx.clients.memory() as f64))],
        )?;

        let live = ctx.live();
        let dbs = live.router.databases();
        // Per (db, command): the aggregate plus every command used so far.
        let mut per_cmd: Vec<(String, String, &CommandStats)> = Vec::new();
        for db in dbs {
            let d = db.config.name().to_string();
            per_cmd.push((d.clone(), "all".into(), db.commands.all()));
            for (idx, c) in db.commands.iter_used() {
                per_cmd.push((d.clone(), command_name(idx), c));
            }
        }
        let lab = |db: &str, cmd: &str| -> Labels {
            vec![("db", db.to_string()), ("command", cmd.to_string())]
        };
        let mut outcomes = Vec::new();
        let mut retries = Vec::new();
        let mut timeouts = Vec::new();
        let mut latency = Vec::new();
        let mut ewma = Vec::new();
        for (db, cmd, c) in &per_cmd {
            for (outcome, v) in [
                ("succeeded", &c.succeeded),
                ("failed", &c.failed),
                ("rejected", &c.rejected),
            ] {
                let mut l = lab(db, cmd);
                l.push(("outcome", outcome.to_string()));
                outcomes.push((l, counter(v.load(Relaxed))));
            }
            retries.push((lab(db, cmd), counter(c.retried.load(Relaxed))));
            timeouts.push((lab(db, cmd), counter(c.timed_out.load(Relaxed))));
            let p = c.percentiles();
            for (q, d) in [
                ("0.5", p.p50),
                ("0.9", p.p90),
                ("0.99", p.p99),
                ("1", p.max),
            ] {
                let mut l = lab(db, cmd);
                l.push(("quantile", q.to_string()));
                latency.push((l, gauge(d.as_secs_f64())));
            }
            ewma.push((lab(db, cmd), gauge(c.ewma_ms() / 1000.0)));
        }
        family(
            &mut encoder,
            "redis_sidecar_commands",
            "Commands forwarded upstream, by outcome (Redis error replies count as succeeded)",
            MetricType::Counter,
            outcomes,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_command_retries",
            "Extra attempts of commands that were safe to retry",
            MetricType::Counter,
            retries,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_command_timeouts",
            "Commands that got no reply in time",
            MetricType::Counter,
            timeouts,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_command_latency_seconds",
            "Command latency percentiles (HDR histogram since start or PROXY RESETSTATS)",
            MetricType::Gauge,
            latency,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_command_latency_ewma_seconds",
            "Moving average of command latency",
            MetricType::Gauge,
            ewma,
        )?;

        let one = |db: &str| -> Labels { vec![("db", db.to_string())] };
        let mut state = Vec::new();
        let mut trips = Vec::new();
        let mut rejected = Vec::new();
        let mut healthy = Vec::new();
        let mut probe = Vec::new();
        let mut probe_failures = Vec::new();
        let mut conns = Vec::new();
        let mut connect_failures = Vec::new();
        let mut failovers = Vec::new();
        let (mut redirects, mut refreshes) = (Vec::new(), Vec::new());
        let (mut node_requests, mut node_up) = (Vec::new(), Vec::new());
        for db in dbs {
            let name = db.config.name();
            let b = db.breaker.snapshot();
            let s = match b.state {
                State::Closed => 0.0,
                State::HalfOpen => 1.0,
                State::Open => 2.0,
            };
            state.push((one(name), gauge(s)));
            trips.push((one(name), counter(b.trips)));
            rejected.push((one(name), counter(b.rejected)));
            healthy.push((
                one(name),
                gauge(db.health.healthy.load(Relaxed) as u8 as f64),
            ));
            probe.push((
                one(name),
                gauge(db.health.last_latency_us.load(Relaxed) as f64 / 1e6),
            ));
            probe_failures.push((one(name), counter(db.health.failures.load(Relaxed))));
            let pool = db.pool(false).state();
            let mut shared = one(name);
            shared.push(("kind", "shared".into()));
            conns.push((shared, gauge(get(&db.stats.mux_connected) as f64)));
            let mut pooled = one(name);
            pooled.push(("kind", "pool".into()));
            conns.push((pooled, gauge(pool.connections as f64)));
            connect_failures.push((one(name), counter(get(&db.stats.connect_failures))));
            if db.config.upstream.sentinel.is_some() {
                failovers.push((one(name), counter(db.config.upstream.endpoint.failovers())));
            }
            if let Some(c) = db.cluster() {
                for (kind, n) in [("moved", &c.moved), ("ask", &c.asked), ("again", &c.again)] {
                    let mut l = one(name);
                    l.push(("kind", kind.into()));
                    redirects.push((l, counter(n.load(Relaxed))));
                }
                refreshes.push((one(name), counter(c.refreshes.load(Relaxed))));
                for node in c.nodes() {
                    let mut l = one(name);
                    l.push(("node", node.addr.clone()));
                    node_requests.push((l.clone(), counter(node.requests.load(Relaxed))));
                    let up =
                        node.breaker.state() == State::Closed && node.health.healthy.load(Relaxed);
                    node_up.push((l, gauge(up as u8 as f64)));
                }
            }
        }
        family(
            &mut encoder,
            "redis_sidecar_circuit_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open",
            MetricType::Gauge,
            state,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_circuit_trips",
            "Times the circuit breaker opened",
            MetricType::Counter,
            trips,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_circuit_rejected",
            "Calls rejected by an open circuit",
            MetricType::Counter,
            rejected,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_upstream_healthy",
            "Last health probe succeeded",
            MetricType::Gauge,
            healthy,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_health_probe_latency_seconds",
            "Round trip of the last successful health probe",
            MetricType::Gauge,
            probe,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_health_probe_failures",
            "Health probes that failed since start",
            MetricType::Counter,
            probe_failures,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_upstream_connections",
            "Open upstream connections",
            MetricType::Gauge,
            conns,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_upstream_connect_failures",
            "Failed upstream connection attempts",
            MetricType::Counter,
            connect_failures,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_sentinel_failovers",
            "Primary changes seen through Sentinel (Sentinel-backed databases only)",
            MetricType::Counter,
            failovers,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_cluster_redirects",
            "MOVED and ASK redirects followed, and TRYAGAIN/CLUSTERDOWN waited out (kind=again; Redis Cluster databases only)",
            MetricType::Counter,
            redirects,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_cluster_map_refreshes",
            "Slot-map refreshes (Redis Cluster databases only)",
            MetricType::Counter,
            refreshes,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_cluster_node_requests",
            "Requests sent to each cluster node",
            MetricType::Counter,
            node_requests,
        )?;
        family(
            &mut encoder,
            "redis_sidecar_cluster_node_up",
            "1 when the node's breaker is closed and its last probe succeeded",
            MetricType::Gauge,
            node_up,
        )?;
        Ok(())
    }
}

/// Renders the metrics text (OpenMetrics text format, which Prometheus reads).
pub fn render(ctx: &Arc<Context>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProxyCollector { ctx: ctx.clone() }));
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
        out.clear();
    }
    out
}

/// Binds `addr` and serves `/metrics`, `/` and `/status.json` until shutdown (the
/// status page's sampler runs as long as the listener does).
pub async fn serve(
    addr: SocketAddr,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let history = status::spawn(ctx.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((stream, _)) = accepted else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let ctx = ctx.clone();
            let history = history.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), respond(stream, &ctx, &history))
                        .await;
            });
        }
    });
    Ok(local)
}

async fn respond(
    mut stream: TcpStream,
    ctx: &Arc<Context>,
    history: &History,
) -> std::io::Result<()> {
    let mut req = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || req.len() > 16 * 1024 {
            return Ok(());
        }
        req.extend_from_slice(&buf[..n]);
    }
    let line = req.split(|&b| b == b'\r').next().unwrap_or(b"");
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next().unwrap_or(b""), parts.next().unwrap_or(b""));
    let path = path.split(|&b| b == b'?').next().unwrap_or(b"");
    let (code, ctype, body) = if method != b"GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_string(),
        )
    } else if path == b"/metrics" {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(ctx),
        )
    } else if path == b"/" {
        (
            "200 OK",
            "text/html; charset=utf-8",
            status::html(&status::read(ctx, history)),
        )
    } else if path == b"/status.json" {
        (
            "200 OK",
            "application/json",
            status::json(&status::read(ctx, history)),
        )
    } else {
        (
            "404 Not Found",
            "text/plain",
            "try /metrics, / or /status.json\n".to_string(),
        )
    };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
