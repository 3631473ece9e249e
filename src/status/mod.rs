//! The live status page on the metrics listener: `GET /` (HTML) and
//! `GET /status.json` (the same data).
//!
//! A background task, started with the metrics listener, reads every database's
//! cumulative statistics every [`SAMPLE_INTERVAL`] and keeps the last
//! [`HISTORY_LEN`] samples per database (10 minutes by default): ops/s and errors/s
//! from counter differences, and p50/p99 latency of the interval from the difference
//! of two copies of the "all commands" latency histogram. The data path pays
//! nothing: the sampler only reads what sessions already record. The current
//! figures (breaker state and time in it, health probe, clients) are read when a
//! page is requested.
//!
//! `/status.json` shape (times in seconds, latencies in milliseconds; a latency is
//! `null` when no command completed in the interval):
//!
//! ```text
//! { "version", "uptime_seconds", "listen", "clients_connected", "ops_per_sec",
//!   "sample_interval_seconds", "history_seconds", "now",
//!   "databases": [ { "name", "db", "upstream", "upstream_db", "circuit" (closed |
//!     open | half_open), "circuit_override" (auto | forced_open | forced_closed),
//!     "circuit_since_seconds", "healthy", "probe_latency_ms", "last_error",
//!     "ops_per_sec", "error_rate", "p50_ms", "p99_ms",
//!     "history": [ { "t", "ops", "errors", "p50_ms", "p99_ms", "circuit" } ] } ] }
//! ```

mod history;
mod page;

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

pub use history::{Reading, Ring, Sample};
pub use page::html;

use crate::context::Context;
use crate::resilience::{Override, State};
use crate::router::Database;
use crate::stats::get;

/// How often the sampler reads the statistics.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept per database: 10 minutes at the default interval.
pub const HISTORY_LEN: usize = 120;
/// Environment variable that changes the sampling interval (milliseconds), for
/// demos and tests; the history then covers `HISTORY_LEN` × that interval.
pub const ENV_INTERVAL_MS: &str = "REDIS_SIDECAR_STATUS_INTERVAL_MS";

/// Interval set by [`set_sample_interval`] in milliseconds; 0 = not set.
static INTERVAL_OVERRIDE_MS: AtomicU64 = AtomicU64::new(0);

/// Shortest and longest sampling interval (other values are clamped).
const INTERVAL_RANGE: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(3600));

fn clamp(interval: Duration) -> Duration {
    interval.clamp(INTERVAL_RANGE.0, INTERVAL_RANGE.1)
}

/// Changes the sampling interval of status samplers started from now on in this
/// process (in-process tests; the binary reads [`ENV_INTERVAL_MS`]). Clamped to
/// 10 ms – 1 h.
pub fn set_sample_interval(interval: Duration) {
    INTERVAL_OVERRIDE_MS.store(clamp(interval).as_millis() as u64, Relaxed);
}

/// The interval a sampler started now uses: [`set_sample_interval`], else
/// [`ENV_INTERVAL_MS`] (a positive integer, clamped to 10 ms – 1 h), else
/// [`SAMPLE_INTERVAL`].
pub fn sample_interval() -> Duration {
    match INTERVAL_OVERRIDE_MS.load(Relaxed) {
        0 => std::env::var(ENV_INTERVAL_MS)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&ms| ms > 0)
            .map_or(SAMPLE_INTERVAL, |ms| clamp(Duration::from_millis(ms))),
        ms => Duration::from_millis(ms),
    }
}

/// The sampled history of every database, in router order.
#[derive(Debug)]
pub struct History {
    interval: Duration,
    rings: Mutex<Vec<Ring>>,
}

impl History {
    /// The sampling interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// How far back the history reaches when full.
    pub fn span(&self) -> Duration {
        self.interval.saturating_mul(HISTORY_LEN as u32)
    }
}

fn reading(db: &Database) -> Reading {
    let all = db.commands.all();
    Reading {
        total: all.total.load(Relaxed),
        errors: all.failed.load(Relaxed) + all.rejected.load(Relaxed),
        histogram: all.histogram_snapshot(),
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Starts the sampler (at [`sample_interval`]) until `shutdown`; returns the history
/// it fills.
pub fn spawn(ctx: Arc<Context>, shutdown: CancellationToken) -> Arc<History> {
    let interval = sample_interval();
    let live = ctx.live();
    let dbs = live.router.databases();
    let history = Arc::new(History {
        interval,
        rings: Mutex::new(
            dbs.iter()
                .map(|db| Ring::new(HISTORY_LEN, reading(db)))
                .collect(),
        ),
    });
    let h = history.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate: the baseline is taken
        let mut last = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = Instant::now();
            let elapsed = now - last;
            last = now;
            let t = unix_now();
            // Read outside the lock: page requests never wait for histogram copies.
            let live = ctx.live();
            let dbs = live.router.databases();
            let readings: Vec<(Reading, State)> = dbs
                .iter()
                .map(|db| (reading(db), db.breaker.state()))
                .collect();
            let mut rings = h.rings.lock().unwrap_or_else(PoisonError::into_inner);
            if rings.len() != dbs.len() {
                // A reload added or removed databases: the history starts again.
                *rings = dbs
                    .iter()
                    .map(|db| Ring::new(HISTORY_LEN, reading(db)))
                    .collect();
                continue;
            }
            for (ring, (r, state)) in rings.iter_mut().zip(readings) {
                ring.push(t, elapsed, r, state);
            }
        }
    });
    history
}

/// One database as the status page shows it.
#[derive(Debug, Clone)]
pub struct DbStatus {
    /// Primary name.
    pub name: String,
    /// Client-facing index.
    pub db: u32,
    /// Upstream `host:port`.
    pub upstream: String,
    /// Database number on the upstream.
    pub upstream_db: u32,
    /// Effective breaker state.
    pub circuit: State,
    /// Operator override.
    pub circuit_override: Override,
    /// Time since the breaker entered its state.
    pub circuit_since: Duration,
    /// The last health probe succeeded (false before the first).
    pub healthy: bool,
    /// At least one probe has run.
    pub probed: bool,
    /// Round trip of the last successful probe, milliseconds.
    pub probe_latency_ms: f64,
    /// The last probe's error, if it failed.
    pub last_error: Option<String>,
    /// Commands per second, last interval.
    pub ops_per_sec: f64,
    /// Failed or rejected share of commands, last interval (0 without commands).
    pub error_rate: f64,
    /// Median latency, last interval.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency, last interval.
    pub p99_ms: Option<f64>,
    /// The sampled history, oldest first.
    pub history: Vec<Sample>,
}

/// Everything the status page shows.
#[derive(Debug, Clone)]
pub struct Status {
    /// Proxy version.
    pub version: &'static str,
    /// Time since start.
    pub uptime: Duration,
    /// Client listen address.
    pub listen: String,
    /// Client connections open now.
    pub clients_connected: u64,
    /// Commands per second over the last interval, all databases.
    pub ops_per_sec: f64,
    /// Sampling interval.
    pub sample_interval: Duration,
    /// How far back a full history reaches.
    pub history_span: Duration,
    /// Seconds since the Unix epoch when this was read.
    pub now: f64,
    /// One entry per database, in index order.
    pub databases: Vec<DbStatus>,
}

/// Reads the current status.
pub fn read(ctx: &Context, history: &History) -> Status {
    let rings = history.rings.lock().unwrap_or_else(PoisonError::into_inner);
    let live = ctx.live();
    let databases: Vec<DbStatus> = live
        .router
        .databases()
        .iter()
        .enumerate()
        .map(|(i, db)| {
            let b = db.breaker.snapshot();
            let h = &db.health;
            let ring = rings.get(i);
            let latest = ring.and_then(Ring::latest);
            let ops = latest.map_or(0.0, |s| s.ops);
            let errors = latest.map_or(0.0, |s| s.errors);
            DbStatus {
                name: db.config.name().to_string(),
                db: db.config.index,
                upstream: db.config.upstream.address(),
                upstream_db: db.config.upstream.db,
                circuit: b.state,
                circuit_override: b.override_,
                circuit_since: b.time_in_state,
                healthy: h.healthy.load(Relaxed),
                probed: h.probes.load(Relaxed) > 0,
                probe_latency_ms: h.last_latency_us.load(Relaxed) as f64 / 1000.0,
                last_error: h.last_error(),
                ops_per_sec: ops,
                error_rate: if ops > 0.0 {
                    (errors / ops).min(1.0)
                } else {
                    0.0
                },
                p50_ms: latest.and_then(|s| s.p50_ms),
                p99_ms: latest.and_then(|s| s.p99_ms),
                history: ring.map_or_else(Vec::new, |r| r.samples().iter().cloned().collect()),
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION"),
        uptime: ctx.stats.started.elapsed(),
        listen: ctx.local_addr().to_string(),
        clients_connected: get(&ctx.stats.connected_clients),
        ops_per_sec: databases.iter().map(|d| d.ops_per_sec).sum(),
        sample_interval: history.interval(),
        history_span: history.span(),
        now: unix_now(),
        databases,
    }
}

/// A JSON string literal (also used by `check`'s JSON report).
pub(crate) fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // `<` too, so the text is safe inside HTML as well.
            c if (c as u32) < 0x20 || c == '<' || c == '\u{2028}' || c == '\u{2029}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A JSON number (`null` if not finite), at most 3 decimals.
fn json_num(out: &mut String, v: f64) {
    if v.is_finite() {
        // Below the last decimal: 0 (not "-0").
        let v = if v.abs() < 0.0005 { 0.0 } else { v };
        let s = format!("{v:.3}");
        out.push_str(s.trim_end_matches('0').trim_end_matches('.'));
    } else {
        out.push_str("null");
    }
}

fn json_opt(out: &mut String, v: Option<f64>) {
    match v {
        Some(v) => json_num(out, v),
        None => out.push_str("null"),
    }
}

/// `/status.json`.
pub fn json(s: &Status) -> String {
    let mut o = String::with_capacity(4096);
    o.push_str("{\"version\":");
    json_str(&mut o, s.version);
    o.push_str(",\"uptime_seconds\":");
    json_num(&mut o, s.uptime.as_secs_f64());
    o.push_str(",\"listen\":");
    json_str(&mut o, &s.listen);
    let _ = write!(o, ",\"clients_connected\":{}", s.clients_connected);
    o.push_str(",\"ops_per_sec\":");
    json_num(&mut o, s.ops_per_sec);
    o.push_str(",\"sample_interval_seconds\":");
    json_num(&mut o, s.sample_interval.as_secs_f64());
    o.push_str(",\"history_seconds\":");
    json_num(&mut o, s.history_span.as_secs_f64());
    o.push_str(",\"now\":");
    json_num(&mut o, s.now);
    o.push_str(",\"databases\":[");
    for (i, d) in s.databases.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        o.push_str("{\"name\":");
        json_str(&mut o, &d.name);
        let _ = write!(o, ",\"db\":{},\"upstream\":", d.db);
        json_str(&mut o, &d.upstream);
        let _ = write!(
            o,
            ",\"upstream_db\":{},\"circuit\":\"{}\",\"circuit_override\":\"{}\",\"circuit_since_seconds\":",
            d.upstream_db,
            d.circuit.as_str(),
            d.circuit_override.as_str()
        );
        json_num(&mut o, d.circuit_since.as_secs_f64());
        let _ = write!(o, ",\"healthy\":{},\"probe_latency_ms\":", d.healthy);
        json_num(&mut o, d.probe_latency_ms);
        o.push_str(",\"last_error\":");
        match &d.last_error {
            Some(e) => json_str(&mut o, e),
            None => o.push_str("null"),
        }
        o.push_str(",\"ops_per_sec\":");
        json_num(&mut o, d.ops_per_sec);
        o.push_str(",\"error_rate\":");
        json_num(&mut o, d.error_rate);
        o.push_str(",\"p50_ms\":");
        json_opt(&mut o, d.p50_ms);
        o.push_str(",\"p99_ms\":");
        json_opt(&mut o, d.p99_ms);
        o.push_str(",\"history\":[");
        for (j, h) in d.history.iter().enumerate() {
            if j > 0 {
                o.push(',');
            }
            o.push_str("{\"t\":");
            json_num(&mut o, h.t);
            o.push_str(",\"ops\":");
            json_num(&mut o, h.ops);
            o.push_str(",\"errors\":");
            json_num(&mut o, h.errors);
            o.push_str(",\"p50_ms\":");
            json_opt(&mut o, h.p50_ms);
            o.push_str(",\"p99_ms\":");
            json_opt(&mut o, h.p99_ms);
            let _ = write!(o, ",\"circuit\":\"{}\"}}", h.circuit.as_str());
        }
        o.push_str("]}");
    }
    o.push_str("]}");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut o = String::new();
        json_str(&mut o, "a\"b\\c\nd\u{1}</script>");
        assert_eq!(o, r#""a\"b\\c\nd\u0001\u003c/script>""#);
    }

    #[test]
    fn interval_is_clamped() {
        assert_eq!(clamp(Duration::from_millis(1)), Duration::from_millis(10));
        assert_eq!(clamp(Duration::MAX), Duration::from_secs(3600));
        assert_eq!(clamp(SAMPLE_INTERVAL), SAMPLE_INTERVAL);
    }

    #[test]
    fn json_numbers() {
        let mut o = String::new();
        for v in [0.0, 1.5, 2.0, 0.0004, 1234.5678, f64::NAN, -0.0001] {
            json_num(&mut o, v);
            o.push(' ');
        }
        assert_eq!(o, "0 1.5 2 0 1234.568 null 0 ");
    }
}
