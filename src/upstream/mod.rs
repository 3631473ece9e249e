//! Upstream Redis connections: setup (AUTH/SELECT), shared multiplexed connections,
//! exclusive pooled connections for stateful commands,
//! and the errors that say whether a command may have reached Redis.

pub mod connect;
pub mod dedicated;
pub mod error;
pub mod frames;
pub mod health;
pub mod identity;
pub mod mux;
pub mod oob;
pub mod pubsub;
mod satellites;
pub mod sentinel;

pub use error::UpstreamError;

/// The span an upstream connection task runs in, so its log lines carry the
/// database (`db`, its primary name) and the upstream (`host:port`) as fields.
pub fn span(cfg: &crate::config::UpstreamConfig) -> tracing::Span {
    tracing::error_span!("upstream", db = %cfg.database, upstream = %cfg.address())
}

/// Receives the outcome of every exchange with an upstream: the circuit breaker's
/// input. Implemented above this layer (by the resilience module), so the decision
/// about what counts as a failure is made here, where the failure happens.
pub trait Observer: Send + Sync + std::fmt::Debug {
    /// The upstream answered (application errors such as `-WRONGTYPE` included).
    fn success(&self);
    /// The upstream could not be reached, broke, timed out, or answered that it is
    /// not serving (`-LOADING`, `-MASTERDOWN`, `-READONLY`).
    fn failure(&self);
    /// The upstream was replaced by another server (a Sentinel failover): earlier
    /// failures were the old server's.
    fn upstream_replaced(&self) {}
    /// A health probe's result (by default counted like traffic).
    fn probe(&self, ok: bool) {
        if ok {
            self.success()
        } else {
            self.failure()
        }
    }
    /// How long until the next probe, given the configured interval.
    fn probe_interval(&self, configured: std::time::Duration) -> std::time::Duration {
        configured
    }
    /// Whether a retry may be sent now: `Err(retry_in)` while the circuit breaker
    /// is open (`None`: forced open by an operator).
    fn admit(&self) -> Result<(), Option<std::time::Duration>> {
        Ok(())
    }
    /// The pause before retry number `retry` (0 = the first retry).
    fn retry_delay(&self, retry: u32) -> std::time::Duration {
        let _ = retry;
        std::time::Duration::ZERO
    }
}

/// Whether an error reply (starting with `-`) means the server is not serving
/// rather than that the command was wrong.
///
/// `-BUSY` (a script or function running too long) is not among them: it is caused
/// by one client's script, the server is up, and the remedy is `SCRIPT KILL` /
/// `FUNCTION KILL`, which an open breaker would refuse. Counting it would let one
/// client's runaway script take every database on that server down for everyone.
pub fn is_not_serving(error_reply: &[u8]) -> bool {
    let body = error_reply.get(1..).unwrap_or(b"");
    [&b"LOADING"[..], b"MASTERDOWN", b"READONLY"]
        .iter()
        .any(|p| body.starts_with(p))
}

/// Whether a reply to the proxy's own `PING` (a health probe, `redis-sidecar
/// check`) shows a server that serves: `+PONG`, or an error other than
/// [`is_not_serving`] (`-BUSY`: a script runs; `-NOPERM`: the proxy's ACL user may
/// not PING), as a connection's setup takes it.
pub fn answers_ping(reply: &[u8]) -> bool {
    reply == b"+PONG\r\n" || (reply.first() == Some(&b'-') && !is_not_serving(reply))
}

/// Whether an error reply is a Redis Cluster redirect: `-MOVED`, `-ASK`,
/// `-TRYAGAIN` or `-CLUSTERDOWN` (Redis did not run the command).
pub fn is_redirect(error_reply: &[u8]) -> bool {
    let body = error_reply.get(1..).unwrap_or(b"");
    [&b"MOVED "[..], b"ASK ", b"TRYAGAIN", b"CLUSTERDOWN"]
        .iter()
        .any(|p| body.starts_with(p))
}

/// Whether an error reply is `-READONLY` (the server is a replica: for a
/// Sentinel-backed database, the primary was demoted).
pub fn is_readonly(error_reply: &[u8]) -> bool {
    error_reply.get(1..).unwrap_or(b"").starts_with(b"READONLY")
}

/// Whether an error reply is `-LOADING` (the server is loading its data set).
pub fn is_loading(error_reply: &[u8]) -> bool {
    error_reply.get(1..).unwrap_or(b"").starts_with(b"LOADING")
}

/// Whether an error reply is Redis's refusal of a connection past `maxclients`
/// (sent unasked as the connection is accepted, which Redis then closes).
pub fn is_max_clients(error_reply: &[u8]) -> bool {
    error_reply.starts_with(b"-ERR max number of clients reached")
}
