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
//!   *upstream outcomes*: [`Breaker::on_failure`] when a connection cannot be made, is
//!   lost, or a command times out; [`Breaker::on_success`] when a reply arrives (a Redis
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
//!    overall deadline (the command timeout): a retry whose back-off would end past the
//!    deadline is not made. Each retry is counted (`retried`) and goes through
//!    `check()` again, so a breaker that opened meanwhile stops the retries.

pub mod backoff;
pub mod breaker;
pub mod latency;

pub use backoff::{Backoff, InvalidBackoff, DEFAULT_JITTER};
pub use breaker::{
    Breaker, BreakerConfig, BreakerSnapshot, Override, Rejected, State, UnknownOverride,
};
pub use latency::{CommandStats, Percentiles, StatsTable, EWMA_ALPHA};

use std::time::Duration;

use crate::upstream::Observer;

/// The breaker hears every upstream outcome. Health probes count only while traffic
/// may flow (closed or half-open; an open breaker whose recovery time has elapsed
/// turns half-open for the probe), and run more often while the breaker is not
/// closed: every quarter of the recovery timeout (at least 100 ms), if sooner.
impl Observer for Breaker {
    fn success(&self) {
        self.on_success();
    }

    fn failure(&self) {
        self.on_failure();
    }

    fn probe(&self, ok: bool) {
        if self.state() == State::Open && self.check().is_err() {
            return;
        }
        if ok {
            self.on_success();
        } else {
            self.on_failure();
        }
    }

    fn probe_interval(&self, configured: Duration) -> Duration {
        if self.state() == State::Closed {
            configured
        } else {
            configured.min((self.config().recovery_timeout / 4).max(Duration::from_millis(100)))
        }
    }
}
