//! Counters shared by every layer. Plain atomics: the hot path never takes a lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Adds to a counter.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Relaxed);
}

/// Reads a counter.
#[inline]
pub fn get(c: &AtomicU64) -> u64 {
    c.load(Relaxed)
}

/// Whole-proxy counters.
#[derive(Debug)]
pub struct ProxyStats {
    /// When the proxy started.
    pub started: Instant,
    /// Client connections open now.
    pub connected_clients: AtomicU64,
    /// Client connections accepted since start.
    pub total_connections: AtomicU64,
    /// Client connections refused (over `max_clients`).
    pub rejected_connections: AtomicU64,
    /// Failed `accept` calls (out of file descriptors, …).
    pub accept_errors: AtomicU64,
    /// Requests answered by the proxy itself (SELECT, PROXY, AUTH …).
    pub local_commands: AtomicU64,
    /// Malformed requests (protocol errors).
    pub protocol_errors: AtomicU64,
    /// AUTH / HELLO … AUTH attempts refused by the proxy's `client_password`.
    pub auth_failures: AtomicU64,
    /// Commands per second over the last sampling interval (all databases).
    pub ops_per_sec: AtomicU64,
    /// Clients closed past `client_output_buffer_limit`.
    pub output_buffer_disconnections: AtomicU64,
    /// Clients closed because all clients' memory passed `max_client_memory`.
    pub evicted_clients: AtomicU64,
    /// Configuration reloads applied (SIGHUP, `PROXY RELOAD`).
    pub config_reloads: AtomicU64,
    /// Configuration reloads refused (a bad file, a listener that could not bind).
    pub config_reload_failures: AtomicU64,
}

impl Default for ProxyStats {
    fn default() -> Self {
        ProxyStats {
            started: Instant::now(),
            connected_clients: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            local_commands: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            auth_failures: AtomicU64::new(0),
            ops_per_sec: AtomicU64::new(0),
            output_buffer_disconnections: AtomicU64::new(0),
            evicted_clients: AtomicU64::new(0),
            config_reloads: AtomicU64::new(0),
            config_reload_failures: AtomicU64::new(0),
        }
    }
}

/// Per-database counters.
#[derive(Debug, Default)]
pub struct DbStats {
    /// Commands forwarded upstream.
    pub commands: AtomicU64,
    /// Error replies from upstream (`-ERR …`) plus commands failed by the proxy.
    pub errors: AtomicU64,
    /// Commands that failed because the upstream could not be reached or was lost.
    pub upstream_failures: AtomicU64,
    /// Commands that got no reply within the command timeout.
    pub timeouts: AtomicU64,
    /// Shared (multiplexed) upstream connections open now.
    pub mux_connected: AtomicU64,
    /// Upstream connections opened since start.
    pub connects: AtomicU64,
    /// Failed connection attempts since start.
    pub connect_failures: AtomicU64,
    /// Commands sent but not yet answered, on shared connections.
    pub in_flight: AtomicU64,
}

/// Decrements a gauge (saturating at 0 is not needed: increments always come first).
#[inline]
pub fn sub(c: &AtomicU64, n: u64) {
    c.fetch_sub(n, Relaxed);
}
