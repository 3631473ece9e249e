//! Health probes: a background task per database that PINGs the upstream on a
//! connection of its own, records the result, latency and last error, and feeds the
//! outcome to the database's observer (the circuit breaker), which also decides how
//! often to probe (more often while the breaker is open).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bb8::ManageConnection;
use tokio_util::sync::CancellationToken;

use super::dedicated::{ExclusiveConn, Manager};
use super::mux::{Batch, MuxHandle, Retry};
use super::Observer;
use crate::command::Block;
use crate::config::UpstreamConfig;

/// What the last probes found.
#[derive(Debug, Default)]
pub struct HealthState {
    /// The last probe succeeded.
    pub healthy: AtomicBool,
    /// Probes run since start.
    pub probes: AtomicU64,
    /// Probes that failed since start.
    pub failures: AtomicU64,
    /// Consecutive failed probes.
    pub consecutive_failures: AtomicU64,
    /// Consecutive successful probes.
    pub consecutive_successes: AtomicU64,
    /// Round-trip time of the last successful probe, in microseconds.
    pub last_latency_us: AtomicU64,
    /// When the last probe ran (milliseconds since the Unix epoch; 0 = never).
    pub last_probe_unix_ms: AtomicU64,
    /// The last probe error, if the last probe failed.
    last_error: Mutex<Option<String>>,
}

impl HealthState {
    /// The last probe's error, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn record(&self, result: Result<Duration, String>) {
        self.probes.fetch_add(1, Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_probe_unix_ms.store(now, Relaxed);
        let ok = result.is_ok();
        self.healthy.store(ok, Relaxed);
        match result {
            Ok(latency) => {
                self.last_latency_us
                    .store(latency.as_micros() as u64, Relaxed);
                self.consecutive_failures.store(0, Relaxed);
                self.consecutive_successes.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.failures.fetch_add(1, Relaxed);
                self.consecutive_successes.store(0, Relaxed);
                self.consecutive_failures.fetch_add(1, Relaxed);
            }
        }
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = result.err();
    }
}

/// Starts the probe task of one database. The first probe runs at once. When a
/// probe succeeds after failures, the database's shared slots are refilled in the
/// background: each gets a PING after a random delay of up to a second, so the
/// slots reconnect before clients need them, and not all at the same instant.
pub fn spawn(
    cfg: Arc<UpstreamConfig>,
    state: Arc<HealthState>,
    observer: Arc<dyn Observer>,
    slots: Vec<MuxHandle>,
    shutdown: CancellationToken,
) {
    let span = super::span(&cfg);
    let task = async move {
        let manager = Manager::new((*cfg).clone(), false);
        let mut conn: Option<ExclusiveConn> = None;
        let mut was_ok = true;
        let mut local_log = crate::limits::Throttle::new(crate::limits::WARN_EVERY);
        loop {
            let result = match probe(&manager, &mut conn, &cfg).await {
                Err(Failed::Local(e)) => {
                    // The proxy is out of descriptors, not the upstream down: the
                    // breaker and the health state do not hear of it.
                    if let Some(suppressed) = local_log.ready() {
                        tracing::warn!(upstream = %cfg.address(), db = cfg.db, error = %e, suppressed, "health probe skipped: no local resources to open its connection");
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(observer.probe_interval(cfg.resilience.health_check_interval)) => {}
                    }
                    continue;
                }
                Err(Failed::Upstream(e)) => Err(e),
                Ok(d) => Ok(d),
            };
            if let Err(e) = &result {
                tracing::warn!(upstream = %cfg.address(), db = cfg.db, error = %e, "health probe failed");
            } else if !was_ok {
                tracing::info!(upstream = %cfg.address(), db = cfg.db, "upstream healthy again; refilling shared connections");
                for slot in &slots {
                    warm(slot.clone(), &cfg);
                }
            }
            was_ok = result.is_ok();
            if was_ok && cfg.endpoint.identity().is_none() && !cfg.replica_reads {
                // What the server is, for the proxy's HELLO (once known, kept).
                super::identity::ask(&cfg).await;
            }
            observer.probe(result.is_ok());
            state.record(result);
            let interval = observer.probe_interval(cfg.resilience.health_check_interval);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    };
    tokio::spawn(tracing::Instrument::instrument(task, span));
}

/// Sends one PING through a slot after a jittered delay (its reply is discarded),
/// which makes the slot reconnect.
fn warm(slot: MuxHandle, cfg: &UpstreamConfig) {
    let cfg = cfg.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..1000))).await;
        // Its time bound starts now, not before the delay (which would take up to
        // a second off it: with short timeouts the reconnect failed, and counted
        // as a failure, against an upstream that was fine).
        let retry = Retry::new(u64::MAX, true, &cfg);
        let (tx, _rx) = tokio::sync::oneshot::channel();
        slot.send(Batch {
            bytes: bytes::Bytes::from_static(b"*1\r\n$4\r\nPING\r\n"),
            count: 1,
            reply: tx,
            block: Block::No,
            retry,
            divert: None,
            may_hold: false,
        })
        .await;
    });
}

/// Why a probe failed: the upstream (counted), or the proxy's own lack of
/// descriptors or memory to open the probe connection (not counted).
enum Failed {
    Upstream(String),
    Local(String),
}

/// One PING on the probe connection (opened or reopened as needed), bounded by the
/// connect and command timeouts.
async fn probe(
    manager: &Manager,
    conn: &mut Option<ExclusiveConn>,
    cfg: &UpstreamConfig,
) -> Result<Duration, Failed> {
    if conn.as_mut().is_some_and(|c| !c.is_alive()) {
        // Closed by Redis while idle (its `timeout` shorter than the probe
        // interval), or the primary moved (Sentinel): probe on a new connection, as
        // a client's command would run on one. Only a probe that gets no answer on
        // a connection it just checked counts as failed.
        *conn = None;
    }
    if conn.is_none() {
        let started = tokio::time::Instant::now();
        *conn = Some(match manager.connect().await {
            Ok(c) => c,
            // Its SELECT refused while a script runs: the server is up (as with
            // `-BUSY` to the PING, see `Manager::is_valid`).
            Err(e) if e.is_busy() => return Ok(started.elapsed()),
            Err(e) if e.counts_as_failure() => return Err(Failed::Upstream(e.to_string())),
            Err(e) => return Err(Failed::Local(e.to_string())),
        });
    }
    let Some(c) = conn.as_mut() else {
        return Err(Failed::Upstream("no probe connection".into()));
    };
    let started = tokio::time::Instant::now();
    // (A `CLIENT PAUSE … ALL` made through the proxy holds the PING back too.)
    let limit = cfg.endpoint.reply_within(cfg.command_timeout);
    let result = match tokio::time::timeout(limit, manager.is_valid(c)).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(e)) => Err(Failed::Upstream(e.to_string())),
        Err(_) => Err(Failed::Upstream(format!(
            "PING got no reply within {limit:?}"
        ))),
    };
    if result.is_err() {
        *conn = None;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The PING that makes a slot reconnect once the upstream is healthy again is
    /// sent after a jittered delay of up to a second; its time bound (connect and
    /// command timeouts) counts from when it is sent, not from before the delay,
    /// or with timeouts under a second its reconnect failed at once (and counted
    /// against the breaker) while the upstream was fine.
    #[tokio::test(start_paused = true)]
    async fn a_warming_ping_gets_its_whole_time_bound_after_the_delay() {
        let mut cfg = crate::config::Config::for_upstream("127.0.0.1", 6379).databases[0]
            .upstream
            .clone();
        cfg.connect_timeout = Duration::from_millis(200);
        cfg.command_timeout = Duration::from_millis(200);
        for _ in 0..20 {
            let (slot, mut rx) = MuxHandle::channel();
            warm(slot, &cfg);
            let batch = rx.recv().await.expect("the warming PING");
            let sent = tokio::time::Instant::now();
            assert_eq!(&batch.bytes[..], b"*1\r\n$4\r\nPING\r\n");
            assert_eq!(batch.retry.bound - sent, Duration::from_millis(400));
        }
    }
}
