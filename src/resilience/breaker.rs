//! Per-database circuit breaker: `CLOSED → OPEN → HALF_OPEN → CLOSED`.
//!
//! * **Closed** — traffic flows. Every failure adds to a count of consecutive failures; a
//!   success resets it. When the count reaches [`BreakerConfig::failure_threshold`] the
//!   breaker *trips* and opens.
//! * **Open** — [`Breaker::check`] rejects every call with the time left until the
//!   breaker will try again. Once [`BreakerConfig::recovery_timeout`] has passed since
//!   it opened, the next `check` moves it to half-open and lets that call through.
//! * **Half-open** — traffic flows as trials. [`BreakerConfig::success_threshold`]
//!   consecutive successes close the breaker; a single failure opens it again (another
//!   trip). Half-open does not limit how many trials are in flight at once: requests on
//!   a multiplexed connection share the fate of the connection anyway.
//!
//! An operator can pin the breaker with an [`Override`] (`PROXY CIRCUIT db OPEN|CLOSE|AUTO`).
//!
//! # Concurrency
//!
//! The breaker is `Send + Sync` and meant to be shared through an `Arc`. Its state and
//! counters are atomics, so the hot path — [`Breaker::check`] and [`Breaker::on_success`]
//! on a closed breaker — is two or three relaxed/acquire loads and no stores. A mutex is
//! taken only to perform a transition (trip, half-open, close, override), and the
//! transition is re-validated under it, so racing callers cannot trip twice or undo
//! each other's transition.
//!
//! Outcomes that arrive while the breaker is open (late replies to requests sent before
//! it tripped) are ignored. Outside the open state an outcome is attributed to the
//! current state, whenever its request was sent: a half-open breaker reopens on a late
//! failure of a request sent before it tripped, which errs on the side of caution.
//!
//! All time is [`tokio::time::Instant`], so tests can drive it with paused time.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::ResilienceConfig;

/// Settings of one [`Breaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures (while closed) that open the breaker. `0` is treated as `1`.
    pub failure_threshold: u32,
    /// How long an open breaker rejects traffic before it lets a trial through.
    pub recovery_timeout: Duration,
    /// Consecutive successes (while half-open) that close the breaker. `0` is treated as `1`.
    pub success_threshold: u32,
}

impl Default for BreakerConfig {
    /// The seed's defaults: 5 failures, 60 s recovery, 2 successes.
    fn default() -> Self {
        BreakerConfig::from(&ResilienceConfig::default())
    }
}

impl From<&ResilienceConfig> for BreakerConfig {
    fn from(r: &ResilienceConfig) -> Self {
        BreakerConfig {
            failure_threshold: r.failure_threshold,
            recovery_timeout: r.recovery_timeout,
            success_threshold: r.success_threshold,
        }
    }
}

/// The automatic state of a breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Traffic flows; failures are being counted.
    Closed,
    /// Traffic is rejected until the recovery timeout has passed.
    Open,
    /// Traffic flows as trials; successes close the breaker, a failure reopens it.
    HalfOpen,
}

impl State {
    /// The name used in reports: `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    fn from_u8(v: u8) -> State {
        match v {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operator's override of the automatic state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Override {
    /// No override: the breaker follows upstream outcomes.
    #[default]
    Auto,
    /// Reject every call until the override is lifted (`PROXY CIRCUIT db OPEN`).
    ForcedOpen,
    /// Let every call through, never trip (`PROXY CIRCUIT db CLOSE`). Failures are
    /// still counted so reports show them.
    ForcedClosed,
}

impl Override {
    /// The name used in reports: `auto`, `forced_open` or `forced_closed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Override::Auto => "auto",
            Override::ForcedOpen => "forced_open",
            Override::ForcedClosed => "forced_closed",
        }
    }

    fn from_u8(v: u8) -> Override {
        match v {
            FORCED_OPEN => Override::ForcedOpen,
            FORCED_CLOSED => Override::ForcedClosed,
            _ => Override::Auto,
        }
    }

    fn to_u8(self) -> u8 {
        match self {
            Override::Auto => AUTO,
            Override::ForcedOpen => FORCED_OPEN,
            Override::ForcedClosed => FORCED_CLOSED,
        }
    }
}

impl fmt::Display for Override {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The argument of `PROXY CIRCUIT db …` was not `OPEN`, `CLOSE` or `AUTO`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown circuit override '{0}' (expected OPEN, CLOSE or AUTO)")]
pub struct UnknownOverride(pub String);

impl FromStr for Override {
    type Err = UnknownOverride;

    /// Parses the operator's word, case-insensitively: `OPEN`, `CLOSE` (or `CLOSED`), `AUTO`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("open") {
            Ok(Override::ForcedOpen)
        } else if s.eq_ignore_ascii_case("close") || s.eq_ignore_ascii_case("closed") {
            Ok(Override::ForcedClosed)
        } else if s.eq_ignore_ascii_case("auto") {
            Ok(Override::Auto)
        } else {
            Err(UnknownOverride(s.to_string()))
        }
    }
}

/// [`Breaker::check`] refused the call: the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    /// Time left until the breaker lets a trial through; `None` when an operator forced it
    /// open (it stays open until the override is lifted).
    pub retry_in: Option<Duration>,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.retry_in {
            Some(d) => write!(f, "circuit open, retry in {:.1}s", d.as_secs_f64()),
            None => f.write_str("circuit forced open by operator"),
        }
    }
}

impl std::error::Error for Rejected {}

/// A consistent-enough picture of a breaker for reports (each field is read atomically;
/// a transition racing with the snapshot may show fields from either side of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    /// Effective state (an operator override is reflected here: forced open shows `Open`,
    /// forced closed shows `Closed`).
    pub state: State,
    /// The operator override in force.
    pub override_: Override,
    /// Consecutive failures counted in the current state.
    pub consecutive_failures: u32,
    /// Consecutive successes counted in the current (half-open) state.
    pub consecutive_successes: u32,
    /// Automatic trips to open since the breaker was created (operator overrides are not trips).
    pub trips: u64,
    /// How long the breaker has been in its current state.
    pub time_in_state: Duration,
    /// For an automatically open breaker, the time left until a trial is let through
    /// (zero if it is due: the next call will be the trial); `None` otherwise.
    pub retry_in: Option<Duration>,
    /// Calls rejected by [`Breaker::check`] since the breaker was created.
    pub rejected: u64,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// A duration in nanoseconds, saturating (for the atomic recovery timeout).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

const AUTO: u8 = 0;
const FORCED_OPEN: u8 = 1;
const FORCED_CLOSED: u8 = 2;

/// A circuit breaker for one database. See the [module docs](self).
#[derive(Debug)]
pub struct Breaker {
    /// The thresholds, changeable in place by a configuration reload
    /// ([`Breaker::reconfigure`]); the recovery timeout in nanoseconds.
    failure_threshold: AtomicU32,
    success_threshold: AtomicU32,
    recovery_timeout: AtomicU64,
    /// `CLOSED`, `OPEN` or `HALF_OPEN`; written only under `transition`.
    state: AtomicU8,
    /// `AUTO`, `FORCED_OPEN` or `FORCED_CLOSED`; written only under `transition`.
    mode: AtomicU8,
    failures: AtomicU32,
    successes: AtomicU32,
    trips: AtomicU64,
    rejected: AtomicU64,
    /// Reference point for `since`.
    epoch: Instant,
    /// When the current state was entered, in nanoseconds after `epoch`.
    since: AtomicU64,
    /// Serialises transitions; guards no data of its own.
    transition: Mutex<()>,
}

impl Breaker {
    /// A closed breaker with no override.
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            failure_threshold: AtomicU32::new(cfg.failure_threshold.max(1)),
            success_threshold: AtomicU32::new(cfg.success_threshold.max(1)),
            recovery_timeout: AtomicU64::new(nanos(cfg.recovery_timeout)),
            state: AtomicU8::new(CLOSED),
            mode: AtomicU8::new(AUTO),
            failures: AtomicU32::new(0),
            successes: AtomicU32::new(0),
            trips: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            epoch: Instant::now(),
            since: AtomicU64::new(0),
            transition: Mutex::new(()),
        }
    }

    /// Call before sending a command upstream.
    ///
    /// `Ok(())` if traffic may go; `Err(Rejected { retry_in })` if the breaker is open,
    /// `retry_in` being the time left until it turns half-open (`None` if forced open).
    /// An open breaker whose recovery timeout has elapsed turns half-open here and lets
    /// the call through as a trial. Every rejection is counted.
    pub fn check(&self) -> Result<(), Rejected> {
        match self.mode.load(Ordering::Acquire) {
            FORCED_CLOSED => return Ok(()),
            FORCED_OPEN => return Err(self.reject(None)),
            _ => {}
        }
        if self.state.load(Ordering::Acquire) != OPEN {
            return Ok(());
        }
        let now = Instant::now();
        let elapsed = self.time_in_state(now);
        if elapsed < self.recovery_timeout() {
            return Err(self.reject(Some(self.recovery_timeout() - elapsed)));
        }
        // Recovery timeout elapsed: turn half-open, unless someone else already moved on.
        let _guard = self.lock();
        match self.mode.load(Ordering::Acquire) {
            FORCED_CLOSED => return Ok(()),
            FORCED_OPEN => return Err(self.reject(None)),
            _ => {}
        }
        if self.state.load(Ordering::Acquire) == OPEN {
            let elapsed = self.time_in_state(now);
            if elapsed < self.recovery_timeout() {
                // Re-opened by a failed trial between our two looks.
                return Err(self.reject(Some(self.recovery_timeout() - elapsed)));
            }
            self.enter(HALF_OPEN, now);
        }
        Ok(())
    }

    /// Report a successful upstream exchange.
    ///
    /// Closed: resets the consecutive-failure count. Half-open: counts a success;
    /// `success_threshold` in a row close the breaker. Open: ignored (a late reply).
    pub fn on_success(&self) {
        match self.state.load(Ordering::Acquire) {
            // Load first so the common case (count already zero) does not write the cache line.
            CLOSED if self.failures.load(Ordering::Relaxed) != 0 => {
                self.failures.store(0, Ordering::Relaxed);
            }
            HALF_OPEN => {
                let n = saturating_increment(&self.successes);
                if n >= self.success_threshold.load(Ordering::Relaxed) {
                    let _guard = self.lock();
                    if self.state.load(Ordering::Acquire) == HALF_OPEN
                        && self.mode.load(Ordering::Acquire) == AUTO
                        && self.successes.load(Ordering::Relaxed)
                            >= self.success_threshold.load(Ordering::Relaxed)
                    {
                        self.enter(CLOSED, Instant::now());
                    }
                }
            }
            _ => {}
        }
    }

    /// Report a failed upstream exchange (connection refused or lost, timeout).
    ///
    /// Closed: counts a failure; `failure_threshold` in a row open the breaker (a trip;
    /// not while forced closed). Half-open: opens the breaker again (a trip).
    /// Open: ignored (a late reply to a request sent before the trip).
    pub fn on_failure(&self) {
        match self.state.load(Ordering::Acquire) {
            CLOSED => {
                let n = saturating_increment(&self.failures);
                if n >= self.failure_threshold.load(Ordering::Relaxed)
                    && self.mode.load(Ordering::Acquire) == AUTO
                {
                    let _guard = self.lock();
                    if self.state.load(Ordering::Acquire) == CLOSED
                        && self.mode.load(Ordering::Acquire) == AUTO
                        && self.failures.load(Ordering::Relaxed)
                            >= self.failure_threshold.load(Ordering::Relaxed)
                    {
                        self.trip(Instant::now());
                    }
                }
            }
            HALF_OPEN => {
                let _guard = self.lock();
                if self.state.load(Ordering::Acquire) == HALF_OPEN
                    && self.mode.load(Ordering::Acquire) == AUTO
                {
                    self.trip(Instant::now());
                }
            }
            _ => {}
        }
    }

    /// The upstream was replaced (a Sentinel failover to a new primary): what was
    /// counted against the old one says nothing about the new one. An open breaker
    /// turns half-open now (the next calls are trials of the new primary instead of
    /// waiting out `recovery_timeout`); a closed one forgets its failures.
    /// Overrides stay as they are.
    pub fn upstream_replaced(&self) {
        let _guard = self.lock();
        if self.mode.load(Ordering::Acquire) != AUTO {
            return;
        }
        match self.state.load(Ordering::Acquire) {
            OPEN => self.enter(HALF_OPEN, Instant::now()),
            CLOSED => self.failures.store(0, Ordering::Relaxed),
            _ => {}
        }
    }

    /// Apply an operator override (`PROXY CIRCUIT db OPEN|CLOSE|AUTO`).
    ///
    /// * `ForcedOpen` — the breaker opens now and rejects every call until lifted.
    /// * `ForcedClosed` — the breaker closes now (counts reset) and lets every call
    ///   through; failures are still counted but never trip it.
    /// * `Auto` — automatic operation resumes. From forced open the breaker goes
    ///   half-open, so the next calls are trials rather than another full recovery wait;
    ///   from forced closed it stays closed with the failures counted meanwhile (if they
    ///   already reach the threshold, the next failure trips it).
    ///
    /// Setting the override already in force changes nothing. Overrides are not trips.
    pub fn set_override(&self, o: Override) {
        let _guard = self.lock();
        let new = o.to_u8();
        let prev = self.mode.load(Ordering::Acquire);
        if prev == new {
            return;
        }
        let now = Instant::now();
        match o {
            Override::ForcedOpen => self.enter(OPEN, now),
            Override::ForcedClosed => self.enter(CLOSED, now),
            Override::Auto => {
                if prev == FORCED_OPEN {
                    self.enter(HALF_OPEN, now);
                }
            }
        }
        self.mode.store(new, Ordering::Release);
    }

    /// The current override.
    pub fn override_(&self) -> Override {
        Override::from_u8(self.mode.load(Ordering::Acquire))
    }

    /// The current effective state (cheap; for a full picture use [`Breaker::snapshot`]).
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    /// A picture of the breaker for reports (`PROXY INFO`, `PROXY CIRCUIT`).
    pub fn snapshot(&self) -> BreakerSnapshot {
        let now = Instant::now();
        let override_ = self.override_();
        let state = self.state();
        let time_in_state = self.time_in_state(now);
        let retry_in = (state == State::Open && override_ == Override::Auto)
            .then(|| self.recovery_timeout().saturating_sub(time_in_state));
        BreakerSnapshot {
            state,
            override_,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            consecutive_successes: self.successes.load(Ordering::Relaxed),
            trips: self.trips.load(Ordering::Relaxed),
            time_in_state,
            retry_in,
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }

    /// The settings in force (thresholds of `0` shown as `1`).
    pub fn config(&self) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: self.failure_threshold.load(Ordering::Relaxed),
            recovery_timeout: self.recovery_timeout(),
            success_threshold: self.success_threshold.load(Ordering::Relaxed),
        }
    }

    /// New thresholds (a configuration reload): the state, its counts and any
    /// override are kept; the next outcome is judged by the new thresholds.
    pub fn reconfigure(&self, cfg: BreakerConfig) {
        let _guard = self.lock();
        self.failure_threshold
            .store(cfg.failure_threshold.max(1), Ordering::Relaxed);
        self.success_threshold
            .store(cfg.success_threshold.max(1), Ordering::Relaxed);
        self.recovery_timeout
            .store(nanos(cfg.recovery_timeout), Ordering::Relaxed);
    }

    fn recovery_timeout(&self) -> Duration {
        Duration::from_nanos(self.recovery_timeout.load(Ordering::Relaxed))
    }

    fn reject(&self, retry_in: Option<Duration>) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        Rejected { retry_in }
    }

    /// Time since the current state was entered.
    fn time_in_state(&self, now: Instant) -> Duration {
        let since = self.epoch + Duration::from_nanos(self.since.load(Ordering::Acquire));
        now.saturating_duration_since(since)
    }

    /// Opens the breaker and counts a trip. Caller holds `transition`.
    fn trip(&self, now: Instant) {
        self.trips.fetch_add(1, Ordering::Relaxed);
        self.enter(OPEN, now);
    }

    /// Moves to `to`, resetting the consecutive counts. Caller holds `transition`.
    fn enter(&self, to: u8, now: Instant) {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        self.since
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Release);
        self.failures.store(0, Ordering::Relaxed);
        self.successes.store(0, Ordering::Relaxed);
        self.state.store(to, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a poisoned one is as good as a healthy one.
        self.transition
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Adds one, sticking at `u32::MAX`; returns the new value.
fn saturating_increment(c: &AtomicU32) -> u32 {
    match c.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_add(1)) {
        Ok(prev) => prev + 1,
        Err(max) => max,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::time::advance;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 5,
            recovery_timeout: Duration::from_secs(60),
            success_threshold: 2,
        }
    }

    #[test]
    fn a_new_upstream_turns_an_open_breaker_half_open_and_forgets_failures() {
        let b = tripped();
        assert!(b.check().is_err());
        b.upstream_replaced();
        assert_eq!(b.state(), State::HalfOpen);
        assert!(b.check().is_ok());
        let b = Breaker::new(cfg());
        for _ in 0..4 {
            b.on_failure();
        }
        b.upstream_replaced();
        b.on_failure();
        assert_eq!(
            b.state(),
            State::Closed,
            "the old upstream's failures are forgotten"
        );
        let b = tripped();
        b.set_override(Override::ForcedOpen);
        b.upstream_replaced();
        assert_eq!(b.state(), State::Open, "an operator's override stays");
    }

    fn tripped() -> Breaker {
        let b = Breaker::new(cfg());
        for _ in 0..5 {
            b.on_failure();
        }
        assert_eq!(b.state(), State::Open);
        b
    }

    #[test]
    fn is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Breaker>();
        assert_send_sync::<Arc<Breaker>>();
    }

    #[test]
    fn config_from_resilience_defaults() {
        let c = BreakerConfig::from(&ResilienceConfig::default());
        assert_eq!(c, cfg());
        assert_eq!(BreakerConfig::default(), cfg());
    }

    #[test]
    fn names() {
        assert_eq!(State::Closed.to_string(), "closed");
        assert_eq!(State::Open.to_string(), "open");
        assert_eq!(State::HalfOpen.to_string(), "half_open");
        assert_eq!(Override::Auto.to_string(), "auto");
        assert_eq!(Override::ForcedOpen.to_string(), "forced_open");
        assert_eq!(Override::ForcedClosed.to_string(), "forced_closed");
        assert_eq!("open".parse(), Ok(Override::ForcedOpen));
        assert_eq!("CLOSE".parse(), Ok(Override::ForcedClosed));
        assert_eq!("Closed".parse(), Ok(Override::ForcedClosed));
        assert_eq!("auto".parse(), Ok(Override::Auto));
        assert!("half".parse::<Override>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn trips_exactly_at_threshold() {
        let b = Breaker::new(cfg());
        for i in 1..5 {
            b.on_failure();
            assert_eq!(b.state(), State::Closed, "after {i} failures");
            assert_eq!(b.snapshot().consecutive_failures, i);
            assert!(b.check().is_ok());
        }
        b.on_failure();
        assert_eq!(b.state(), State::Open);
        let s = b.snapshot();
        assert_eq!(s.trips, 1);
        assert_eq!(s.consecutive_failures, 0);
        assert!(b.check().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn success_resets_failure_count() {
        let b = Breaker::new(cfg());
        for _ in 0..4 {
            b.on_failure();
        }
        b.on_success();
        assert_eq!(b.snapshot().consecutive_failures, 0);
        for _ in 0..4 {
            b.on_failure();
        }
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.snapshot().trips, 0);
        b.on_failure();
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn open_rejects_with_countdown() {
        let b = tripped();
        assert_eq!(
            b.check(),
            Err(Rejected {
                retry_in: Some(Duration::from_secs(60))
            })
        );
        advance(Duration::from_secs(20)).await;
        assert_eq!(
            b.check(),
            Err(Rejected {
                retry_in: Some(Duration::from_secs(40))
            })
        );
        advance(Duration::from_millis(39_500)).await;
        assert_eq!(
            b.check(),
            Err(Rejected {
                retry_in: Some(Duration::from_millis(500))
            })
        );
        let s = b.snapshot();
        assert_eq!(s.rejected, 3);
        assert_eq!(s.retry_in, Some(Duration::from_millis(500)));
        assert_eq!(s.state, State::Open);
        // Outcomes of requests sent before the trip are ignored while open.
        b.on_success();
        b.on_success();
        b.on_failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.snapshot().trips, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_recovery_timeout() {
        let b = tripped();
        advance(Duration::from_secs(60)).await;
        assert_eq!(b.snapshot().retry_in, Some(Duration::ZERO));
        assert_eq!(b.state(), State::Open, "turns half-open on the next check");
        assert!(b.check().is_ok());
        assert_eq!(b.state(), State::HalfOpen);
        let s = b.snapshot();
        assert_eq!(s.retry_in, None);
        assert_eq!(s.time_in_state, Duration::ZERO);
        // Half-open lets traffic through.
        assert!(b.check().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn two_successes_close() {
        let b = tripped();
        advance(Duration::from_secs(61)).await;
        assert!(b.check().is_ok());
        b.on_success();
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.snapshot().consecutive_successes, 1);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
        let s = b.snapshot();
        assert_eq!(s.consecutive_successes, 0);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.trips, 1);
        // Closed again: a fresh run of 5 failures is needed to trip.
        for _ in 0..4 {
            b.on_failure();
        }
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn failure_in_half_open_reopens() {
        let b = tripped();
        advance(Duration::from_secs(60)).await;
        assert!(b.check().is_ok());
        b.on_success();
        b.on_failure();
        assert_eq!(b.state(), State::Open);
        let s = b.snapshot();
        assert_eq!(s.trips, 2);
        assert_eq!(s.retry_in, Some(Duration::from_secs(60)));
        assert_eq!(
            b.check(),
            Err(Rejected {
                retry_in: Some(Duration::from_secs(60))
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn forced_open_rejects_until_auto() {
        let b = Breaker::new(cfg());
        b.set_override(Override::ForcedOpen);
        let s = b.snapshot();
        assert_eq!((s.state, s.override_), (State::Open, Override::ForcedOpen));
        assert_eq!(s.retry_in, None);
        assert_eq!(s.trips, 0, "an override is not a trip");
        advance(Duration::from_secs(3600)).await;
        assert_eq!(b.check(), Err(Rejected { retry_in: None }));
        assert_eq!(b.snapshot().rejected, 1);
        assert_eq!(
            b.check().map_err(|e| e.to_string()),
            Err("circuit forced open by operator".to_string())
        );
        b.set_override(Override::Auto);
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.override_(), Override::Auto);
        assert!(b.check().is_ok());
        b.on_success();
        b.on_success();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_closed_never_trips() {
        let b = tripped();
        b.set_override(Override::ForcedClosed);
        assert_eq!(b.state(), State::Closed);
        assert!(b.check().is_ok());
        for _ in 0..20 {
            b.on_failure();
            assert!(b.check().is_ok());
        }
        let s = b.snapshot();
        assert_eq!(s.state, State::Closed);
        assert_eq!(s.consecutive_failures, 20, "failures still counted");
        assert_eq!(s.trips, 1);
        // Back to auto: the counted failures already reach the threshold, so the next trips.
        b.set_override(Override::Auto);
        assert_eq!(b.state(), State::Closed);
        b.on_failure();
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.snapshot().trips, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn same_override_twice_is_noop() {
        let b = Breaker::new(cfg());
        b.set_override(Override::ForcedOpen);
        advance(Duration::from_secs(5)).await;
        b.set_override(Override::ForcedOpen);
        assert_eq!(b.snapshot().time_in_state, Duration::from_secs(5));
        b.set_override(Override::Auto);
        b.set_override(Override::Auto);
        assert_eq!(b.state(), State::HalfOpen);
    }

    #[tokio::test(start_paused = true)]
    async fn time_in_state_advances() {
        let b = Breaker::new(cfg());
        assert_eq!(b.snapshot().time_in_state, Duration::ZERO);
        advance(Duration::from_secs(7)).await;
        assert_eq!(b.snapshot().time_in_state, Duration::from_secs(7));
        for _ in 0..5 {
            b.on_failure();
        }
        assert_eq!(b.snapshot().time_in_state, Duration::ZERO);
        advance(Duration::from_millis(1500)).await;
        let s = b.snapshot();
        assert_eq!(s.time_in_state, Duration::from_millis(1500));
        assert_eq!(s.retry_in, Some(Duration::from_millis(58_500)));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_thresholds_act_as_one() {
        let b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            recovery_timeout: Duration::ZERO,
            success_threshold: 0,
        });
        assert_eq!(b.config().failure_threshold, 1);
        b.on_failure();
        assert_eq!(b.state(), State::Open);
        assert!(
            b.check().is_ok(),
            "zero recovery timeout: straight to half-open"
        );
        assert_eq!(b.state(), State::HalfOpen);
        b.on_success();
        assert_eq!(b.state(), State::Closed);
    }

    #[test]
    fn concurrent_failures_trip_once() {
        let b = Arc::new(Breaker::new(cfg()));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        b.on_failure();
                    }
                })
            })
            .collect();
        for t in threads {
            assert!(t.join().is_ok());
        }
        // Failures arriving while open are ignored: exactly one trip.
        let s = b.snapshot();
        assert_eq!(s.state, State::Open);
        assert_eq!(s.trips, 1);
    }
}
