//! Resilience building blocks: circuit breaker, back-off, latency statistics.
//!
//! Everything here is a pure state machine: no sockets, no tasks, no sleeping. The
//! upstream and session layers drive these pieces and do the waiting themselves, which
//! keeps the rules testable with paused tokio time (all timestamps are
//! [`tokio::time::Instant`]).
//!
//! # The pieces
//!
//! * [`breaker`] — one [`Breaker`] per database, shared through an `Arc`. It is fed by
//!   *upstream outcomes*: [`Breaker::on_failure`] when a connection cannot be made or a
//!   command times out (not when Redis closes a connection: it does so for one
//!   client's sake, e.g. its output buffer limit or idle timeout, and a Redis that is
//!   gone shows when the next connection cannot be made);
//!   [`Breaker::on_success`] when a reply arrives (a Redis
//!   error reply such as `-WRONGTYPE` is a success here: the server answered). Before a
//!   command is sent, [`Breaker::check`] decides whether it may go; while the breaker is
//!   open, clients get an immediate error instead of waiting on a dead upstream.
//!   Operators can pin it open or closed (`PROXY CIRCUIT db OPEN|CLOSE|AUTO`).
//! * [`backoff`] — [`Backoff`] computes the pause before each retry: exponential from
//!   `retry_base_delay`, capped at `retry_max_delay`, with random jitter so clients that
//!   failed together do not retry together.
//! * [`latency`] — a [`StatsTable`] per database counts outcomes per command (total,
//!   succeeded, failed, retried, timed out, rejected) and keeps a moving average and
//!   HDR-histogram percentiles of latency, for `PROXY INFO`.
//!
//! # How they fit together
//!
//! 1. `check()` the database's breaker. If rejected, answer the client with an error
//!    (mentioning `retry_in`) and count the command as rejected.
//! 2. Send the command and time it; feed the outcome to the breaker and to the stats.
//! 3. A failed command is retried **only when that is provably safe**: the command
//!    never reached Redis (the connection could not be established, or failed before
//!    any byte of the request was written), or the command is read-only (repeating it
//!    cannot change data). A write whose fate is unknown is never retried; the client
//!    gets the error.
//! 4. Between attempts, wait [`Backoff::delay`]`(attempt)`, but all attempts share one
//!    overall bound (connect timeout + command timeout): a retry that could not begin
//!    before it is not made. Each retry goes through `check()` again, so a breaker
//!    that opened meanwhile stops the retries.
//!
//! The upstream layer runs these steps through [`Policy`] (its `Observer`): retries
//! are made by the shared connection slot, the one place that knows the order in
//! which a session's batches were sent (see `upstream::mux`).

pub mod backoff;
pub mod breaker;
pub mod latency;

pub use backoff::{Backoff, InvalidBackoff, DEFAULT_JITTER};
pub use breaker::{
    Breaker, BreakerConfig, BreakerSnapshot, Override, Rejected, State, UnknownOverride,
};
pub use latency::{CommandStats, Percentiles, StatsTable, EWMA_ALPHA};

use std::sync::Arc;
use std::time::Duration;

use crate::upstream::Observer;

/// A database's resilience policy as the upstream layer sees it: the breaker hears
/// every upstream outcome and admits retries; the back-off spaces them.
#[derive(Debug)]
pub struct Policy {
    /// The database's circuit breaker.
    pub breaker: Arc<Breaker>,
    /// Pauses between retries.
    pub backoff: Backoff,
}

/// Health probes count only while traffic may flow (closed or half-open; an open
/// breaker whose recovery time has elapsed turns half-open for the probe), and run
/// more often while the breaker is not closed: every quarter of the recovery
/// timeout (at least 100 ms), if sooner.
impl Observer for Policy {
    fn success(&self) {
        self.breaker.on_success();
    }

    fn failure(&self) {
        self.breaker.on_failure();
    }

    fn upstream_replaced(&self) {
        self.breaker.upstream_replaced();
    }

    fn probe(&self, ok: bool) {
        let b = &self.breaker;
        if b.state() == State::Open && b.check().is_err() {
            return;
        }
        if ok {
            b.on_success();
        } else {
            b.on_failure();
        }
    }

    fn probe_interval(&self, configured: Duration) -> Duration {
        let b = &self.breaker;
        if b.state() == State::Closed {
            configured
        } else {
            configured.min((b.config().recovery_timeout / 4).max(Duration::from_millis(100)))
        }
    }

    fn admit(&self) -> Result<(), Option<Duration>> {
        self.breaker.check().map_err(|r| r.retry_in)
    }

    fn retry_delay(&self, retry: u32) -> Duration {
        self.backoff.delay(retry)
    }
}
