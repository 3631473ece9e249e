//! Per-(database, command) outcome counters and latency statistics.
//!
//! Each database owns one [`StatsTable`]: a fixed array of [`CommandStats`], one per
//! command, indexed by a dense command index the caller assigns (`0..n`), plus an
//! "all commands" aggregate. Indexes are resolved once by the caller (from the command
//! table), so recording never hashes a name.
//!
//! # Cost and locking
//!
//! Counters are relaxed atomics. The moving average is an `f64` kept as bits in an
//! `AtomicU64` and updated by compare-and-swap, so it is lock-free too.
//!
//! Percentiles come from an [`hdrhistogram::Histogram`] in microseconds (1 µs to 1 h,
//! 2 significant digits, so any reported value is within 1 % of the true one). It sits
//! behind a `std::sync::Mutex` that [`CommandStats::record`] takes once per call
//! ([`StatsTable::record`] therefore takes two: the command's and the aggregate's):
//! **this is the only lock in the module**, it is held for a few nanoseconds, and with
//! the proxy's default single-threaded runtime it is never contended. The histogram
//! (≈ 25 KiB) is allocated lazily on the first recorded latency, so commands a database
//! never sees cost only their counters.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;

/// Weight of a new sample in the exponentially weighted moving average.
pub const EWMA_ALPHA: f64 = 0.1;

/// Lowest latency the histogram discerns, in microseconds.
const HIST_LOW_US: u64 = 1;
/// Highest latency the histogram tracks, in microseconds (1 hour); longer ones are
/// recorded as 1 hour.
const HIST_HIGH_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histogram.
const HIST_SIGFIG: u8 = 2;

/// Bits of the "no sample yet" marker for the moving average.
const EWMA_EMPTY: u64 = 0x7ff8_0000_0000_0000; // f64::NAN

/// Latency percentiles of one [`CommandStats`]. All zero when nothing was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Percentiles {
    /// Median latency.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest latency recorded (to histogram precision; capped at 1 hour).
    pub max: Duration,
    /// Number of latencies the percentiles are computed from.
    pub count: u64,
}

/// Outcome counters and latency statistics of one command (or of all commands) on one
/// database.
///
/// Invariant (between resets, once concurrent updates have landed):
/// `total = succeeded + failed + rejected`. `retried` and `timed_out` are extra tallies:
/// a timed-out command is also recorded as failed, and a retried command is recorded
/// once, with its final outcome.
pub struct CommandStats {
    /// Commands that completed (see [`CommandStats::record`]) or were rejected.
    pub total: AtomicU64,
    /// Commands that got a reply from upstream (including Redis error replies such as
    /// `-WRONGTYPE`: the exchange itself worked).
    pub succeeded: AtomicU64,
    /// Commands that failed in transport: upstream unreachable, connection lost, timeout.
    pub failed: AtomicU64,
    /// Extra attempts made (one per retry, not per command).
    pub retried: AtomicU64,
    /// Commands that failed because they ran out of time (also counted in `failed`).
    pub timed_out: AtomicU64,
    /// Commands refused without being sent (circuit breaker open).
    pub rejected: AtomicU64,
    /// Moving average of latency in milliseconds, as `f64` bits; NaN = no sample yet.
    ewma_bits: AtomicU64,
    /// Latency histogram in microseconds, allocated on first use.
    histogram: OnceLock<Box<Mutex<Histogram<u64>>>>,
}

impl Default for CommandStats {
    fn default() -> Self {
        CommandStats::new()
    }
}

impl fmt::Debug for CommandStats {
    /// Counters and the moving average; the histogram is summarised by its percentiles.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandStats")
            .field("total", &self.total.load(Relaxed))
            .field("succeeded", &self.succeeded.load(Relaxed))
            .field("failed", &self.failed.load(Relaxed))
            .field("retried", &self.retried.load(Relaxed))
            .field("timed_out", &self.timed_out.load(Relaxed))
            .field("rejected", &self.rejected.load(Relaxed))
            .field("ewma_ms", &self.ewma_ms())
            .field("percentiles", &self.percentiles())
            .finish()
    }
}

impl CommandStats {
    /// Empty statistics; no histogram is allocated yet.
    pub fn new() -> Self {
        CommandStats {
            total: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ewma_bits: AtomicU64::new(EWMA_EMPTY),
            histogram: OnceLock::new(),
        }
    }

    /// Records a completed command: its latency (send to reply, or to failure) and whether
    /// the exchange succeeded. Counts `total` and `succeeded` or `failed`, and feeds the
    /// moving average and the histogram (the one lock, see the [module docs](self)).
    pub fn record(&self, latency: Duration, ok: bool) {
        self.total.fetch_add(1, Relaxed);
        if ok {
            self.succeeded.fetch_add(1, Relaxed);
        } else {
            self.failed.fetch_add(1, Relaxed);
        }
        self.update_ewma(latency.as_secs_f64() * 1000.0);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // Out-of-range values are clamped to the histogram's bounds.
        self.histogram_lock().saturating_record(micros);
    }

    /// Records `n` commands that completed together (one pipelined batch) with the same
    /// latency: counts each, feeds the moving average once and the histogram `n` times
    /// in one call.
    pub fn record_n(&self, latency: Duration, ok: bool, n: u64) {
        if n == 0 {
            return;
        }
        self.total.fetch_add(n, Relaxed);
        if ok {
            self.succeeded.fetch_add(n, Relaxed);
        } else {
            self.failed.fetch_add(n, Relaxed);
        }
        self.update_ewma(latency.as_secs_f64() * 1000.0);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram_lock().saturating_record_n(micros, n);
    }

    /// Records a command rejected without being sent (counts `total` and `rejected`;
    /// no latency).
    pub fn record_rejected(&self) {
        self.total.fetch_add(1, Relaxed);
        self.rejected.fetch_add(1, Relaxed);
    }

    /// Counts one extra attempt (a retry). The command's final outcome is recorded
    /// separately with [`CommandStats::record`].
    pub fn record_retry(&self) {
        self.retried.fetch_add(1, Relaxed);
    }

    /// Counts a timeout. The command is recorded separately as failed with
    /// [`CommandStats::record`].
    pub fn record_timeout(&self) {
        self.timed_out.fetch_add(1, Relaxed);
    }

    /// Exponentially weighted moving average of latency in milliseconds (weight
    /// [`EWMA_ALPHA`] for each new sample; the first sample sets it). `0.0` before any
    /// sample.
    pub fn ewma_ms(&self) -> f64 {
        let v = f64::from_bits(self.ewma_bits.load(Relaxed));
        if v.is_nan() {
            0.0
        } else {
            v
        }
    }

    /// p50, p90, p99 and max latency, and the number of latencies recorded.
    pub fn percentiles(&self) -> Percentiles {
        let Some(h) = self.histogram.get() else {
            return Percentiles::default();
        };
        let h = h.lock().unwrap_or_else(PoisonError::into_inner);
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: Duration::from_micros(h.value_at_quantile(0.50)),
            p90: Duration::from_micros(h.value_at_quantile(0.90)),
            p99: Duration::from_micros(h.value_at_quantile(0.99)),
            max: Duration::from_micros(h.max()),
            count: h.len(),
        }
    }

    /// A copy of the latency histogram (microseconds), `None` before the first recorded
    /// latency. Holds the lock for one copy (a ≈ 25 KiB memcpy); meant for periodic
    /// samplers such as the status page, never the data path.
    pub fn histogram_snapshot(&self) -> Option<Histogram<u64>> {
        let h = self.histogram.get()?;
        Some(h.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Sets every counter, the moving average and the histogram back to empty (an
    /// allocated histogram is kept and cleared). Updates racing with a reset may land on
    /// either side of it.
    pub fn reset(&self) {
        for c in [
            &self.total,
            &self.succeeded,
            &self.failed,
            &self.retried,
            &self.timed_out,
            &self.rejected,
        ] {
            c.store(0, Relaxed);
        }
        self.ewma_bits.store(EWMA_EMPTY, Relaxed);
        if let Some(h) = self.histogram.get() {
            h.lock().unwrap_or_else(PoisonError::into_inner).reset();
        }
    }

    fn update_ewma(&self, sample_ms: f64) {
        // fetch_update retries the compare-and-swap until no other writer intervened.
        let _ = self.ewma_bits.fetch_update(Relaxed, Relaxed, |bits| {
            let old = f64::from_bits(bits);
            let new = if old.is_nan() {
                sample_ms
            } else {
                old + EWMA_ALPHA * (sample_ms - old)
            };
            Some(new.to_bits())
        });
    }

    fn histogram_lock(&self) -> MutexGuard<'_, Histogram<u64>> {
        self.histogram
            .get_or_init(|| {
                // Constant, valid bounds (low ≥ 1, high ≥ 2·low, sigfig ≤ 5): cannot fail.
                let h = Histogram::new_with_bounds(HIST_LOW_US, HIST_HIGH_US, HIST_SIGFIG)
                    .expect("constant histogram bounds are valid");
                Box::new(Mutex::new(h))
            })
            .lock()
            // A panic while recording leaves at worst one miscounted sample.
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The statistics of one database: one [`CommandStats`] per command index, plus an
/// aggregate over all commands.
///
/// Built with a fixed number of commands `n`. Indexes `0..n` are the caller's commands;
/// any index `>= n` (a command the caller has no index for) lands in one shared
/// overflow slot, reported by [`StatsTable::iter_used`] as index `n`, so recording
/// never panics.
#[derive(Debug)]
pub struct StatsTable {
    /// `n + 1` entries: the commands, then the overflow slot.
    commands: Box<[CommandStats]>,
    /// Aggregate of every command.
    all: CommandStats,
}

impl StatsTable {
    /// A table for `n` commands (indexes `0..n`) plus the overflow slot `n`.
    pub fn new(n: usize) -> Self {
        StatsTable {
            commands: (0..=n).map(|_| CommandStats::new()).collect(),
            all: CommandStats::new(),
        }
    }

    /// Number of command indexes (`n`); the overflow slot has index `n`.
    pub fn len(&self) -> usize {
        self.commands.len() - 1
    }

    /// True if the table was built for zero commands (only the overflow slot exists).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Statistics of command `idx` (the overflow slot for `idx >= n`).
    pub fn command(&self, idx: usize) -> &CommandStats {
        let last = self.commands.len() - 1;
        &self.commands[idx.min(last)]
    }

    /// Aggregate statistics over all commands.
    pub fn all(&self) -> &CommandStats {
        &self.all
    }

    /// [`CommandStats::record`] on command `idx` and on the aggregate.
    pub fn record(&self, idx: usize, latency: Duration, ok: bool) {
        self.command(idx).record(latency, ok);
        self.all.record(latency, ok);
    }

    /// [`CommandStats::record_n`] on command `idx` only (the caller records the
    /// aggregate once per batch with [`StatsTable::all`]).
    pub fn record_n(&self, idx: usize, latency: Duration, ok: bool, n: u64) {
        self.command(idx).record_n(latency, ok, n);
    }

    /// [`CommandStats::record_rejected`] on command `idx` and on the aggregate.
    pub fn record_rejected(&self, idx: usize) {
        self.command(idx).record_rejected();
        self.all.record_rejected();
    }

    /// [`CommandStats::record_retry`] on command `idx` and on the aggregate.
    pub fn record_retry(&self, idx: usize) {
        self.command(idx).record_retry();
        self.all.record_retry();
    }

    /// [`CommandStats::record_timeout`] on command `idx` and on the aggregate.
    pub fn record_timeout(&self, idx: usize) {
        self.command(idx).record_timeout();
        self.all.record_timeout();
    }

    /// Resets every command and the aggregate.
    pub fn reset(&self) {
        for c in self.commands.iter() {
            c.reset();
        }
        self.all.reset();
    }

    /// The commands with `total > 0`, with their indexes, in index order (the overflow
    /// slot, if used, comes last as index `n`).
    pub fn iter_used(&self) -> impl Iterator<Item = (usize, &CommandStats)> {
        self.commands
            .iter()
            .enumerate()
            .filter(|(_, c)| c.total.load(Relaxed) > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `got` is within HDR precision (2 significant digits: 1 %) of `want`.
    fn close(got: Duration, want: Duration) -> bool {
        let (g, w) = (got.as_secs_f64(), want.as_secs_f64());
        (g - w).abs() <= w * 0.01
    }

    #[test]
    fn counts() {
        let s = CommandStats::new();
        s.record(ms(1), true);
        s.record(ms(2), true);
        s.record(ms(3), false);
        s.record_timeout();
        s.record_rejected();
        s.record_retry();
        s.record_retry();
        let get = |c: &AtomicU64| c.load(Relaxed);
        assert_eq!(get(&s.total), 4);
        assert_eq!(get(&s.succeeded), 2);
        assert_eq!(get(&s.failed), 1);
        assert_eq!(get(&s.timed_out), 1);
        assert_eq!(get(&s.rejected), 1);
        assert_eq!(get(&s.retried), 2);
        assert_eq!(
            get(&s.total),
            get(&s.succeeded) + get(&s.failed) + get(&s.rejected)
        );
        assert_eq!(s.percentiles().count, 3, "rejections carry no latency");
    }

    #[test]
    fn histogram_is_lazy() {
        let s = CommandStats::new();
        assert!(s.histogram.get().is_none());
        s.record_rejected();
        assert!(s.histogram.get().is_none());
        assert_eq!(s.percentiles(), Percentiles::default());
        assert_eq!(s.ewma_ms(), 0.0);
        s.record(ms(1), true);
        assert!(s.histogram.get().is_some());
    }

    #[test]
    fn ewma_first_sample_then_converges() {
        let s = CommandStats::new();
        s.record(ms(10), true);
        assert!((s.ewma_ms() - 10.0).abs() < 1e-9);
        s.record(ms(20), true);
        assert!((s.ewma_ms() - 11.0).abs() < 1e-9, "10 + 0.1·(20 - 10)");
        for _ in 0..100 {
            s.record(ms(20), true);
        }
        assert!((s.ewma_ms() - 20.0).abs() < 0.01, "got {}", s.ewma_ms());
        for _ in 0..100 {
            s.record(Duration::from_micros(500), true);
        }
        assert!((s.ewma_ms() - 0.5).abs() < 0.01, "got {}", s.ewma_ms());
    }

    #[test]
    fn percentiles_from_known_samples() {
        let s = CommandStats::new();
        // Recorded out of order: percentiles must not depend on arrival order.
        for n in (1..=100).rev() {
            s.record(ms(n), true);
        }
        let p = s.percentiles();
        assert_eq!(p.count, 100);
        assert!(close(p.p50, ms(50)), "p50 {:?}", p.p50);
        assert!(close(p.p90, ms(90)), "p90 {:?}", p.p90);
        assert!(close(p.p99, ms(99)), "p99 {:?}", p.p99);
        assert!(close(p.max, ms(100)), "max {:?}", p.max);
    }

    #[test]
    fn extreme_latencies_are_clamped() {
        let s = CommandStats::new();
        s.record(Duration::ZERO, true);
        s.record(Duration::from_secs(2 * 3600), false);
        s.record(Duration::MAX, false);
        let p = s.percentiles();
        assert_eq!(p.count, 3);
        assert!(close(p.max, Duration::from_secs(3600)), "max {:?}", p.max);
        assert!(s.ewma_ms().is_finite());
    }

    #[test]
    fn reset_clears_everything() {
        let s = CommandStats::new();
        for n in 1..=10 {
            s.record(ms(n), n % 2 == 0);
        }
        s.record_retry();
        s.record_timeout();
        s.record_rejected();
        s.reset();
        for c in [
            &s.total,
            &s.succeeded,
            &s.failed,
            &s.retried,
            &s.timed_out,
            &s.rejected,
        ] {
            assert_eq!(c.load(Relaxed), 0);
        }
        assert_eq!(s.ewma_ms(), 0.0);
        assert_eq!(s.percentiles(), Percentiles::default());
        // Usable after reset; the first sample sets the average again.
        s.record(ms(7), true);
        assert!((s.ewma_ms() - 7.0).abs() < 1e-9);
        assert_eq!(s.percentiles().count, 1);
    }

    #[test]
    fn table_records_command_and_aggregate() {
        let t = StatsTable::new(3);
        assert_eq!(t.len(), 3);
        assert!(!t.is_empty());
        t.record(0, ms(1), true);
        t.record(2, ms(3), false);
        t.record(2, ms(5), true);
        t.record_rejected(2);
        t.record_retry(0);
        t.record_timeout(2);
        assert_eq!(t.command(0).total.load(Relaxed), 1);
        assert_eq!(t.command(1).total.load(Relaxed), 0);
        assert_eq!(t.command(2).total.load(Relaxed), 3);
        assert_eq!(t.command(0).retried.load(Relaxed), 1);
        assert_eq!(t.command(2).timed_out.load(Relaxed), 1);
        let all = t.all();
        assert_eq!(all.total.load(Relaxed), 4);
        assert_eq!(all.succeeded.load(Relaxed), 2);
        assert_eq!(all.failed.load(Relaxed), 1);
        assert_eq!(all.rejected.load(Relaxed), 1);
        assert_eq!(all.retried.load(Relaxed), 1);
        assert_eq!(all.timed_out.load(Relaxed), 1);
        assert_eq!(all.percentiles().count, 3);
        let used: Vec<usize> = t.iter_used().map(|(i, _)| i).collect();
        assert_eq!(used, vec![0, 2]);
    }

    #[test]
    fn out_of_range_index_uses_overflow_slot() {
        let t = StatsTable::new(2);
        t.record(2, ms(1), true);
        t.record(usize::MAX, ms(1), true);
        assert_eq!(t.command(99).total.load(Relaxed), 2);
        let used: Vec<(usize, u64)> = t
            .iter_used()
            .map(|(i, c)| (i, c.total.load(Relaxed)))
            .collect();
        assert_eq!(used, vec![(2, 2)]);

        let empty = StatsTable::new(0);
        assert!(empty.is_empty());
        empty.record(0, ms(1), true);
        assert_eq!(empty.iter_used().count(), 1);
    }

    #[test]
    fn table_reset() {
        let t = StatsTable::new(2);
        t.record(0, ms(1), true);
        t.record(1, ms(2), false);
        t.reset();
        assert_eq!(t.iter_used().count(), 0);
        assert_eq!(t.all().total.load(Relaxed), 0);
        assert_eq!(t.all().percentiles().count, 0);
    }

    #[test]
    fn concurrent_records_are_all_counted() {
        let t = Arc::new(StatsTable::new(4));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        t.record(i, Duration::from_micros(100 + n), n % 10 != 0);
                    }
                })
            })
            .collect();
        for th in threads {
            assert!(th.join().is_ok());
        }
        let all = t.all();
        assert_eq!(all.total.load(Relaxed), 4000);
        assert_eq!(all.failed.load(Relaxed), 400);
        assert_eq!(all.percentiles().count, 4000);
        let e = all.ewma_ms();
        assert!(e > 0.09 && e < 1.2, "ewma {e}");
    }
}
