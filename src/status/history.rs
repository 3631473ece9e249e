//! One database's history for the status page: a ring of samples, each made from
//! the difference between two readings of the database's cumulative statistics
//! (command counters and the "all commands" latency histogram).
//!
//! The statistics are cumulative since start or the last `PROXY RESETSTATS`. A
//! counter that went backwards, or a histogram that holds fewer latencies than the
//! previous reading, means a reset happened in between: the sample then counts what
//! was recorded since the reset (never a negative rate).

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::resilience::State;

/// One reading of a database's cumulative statistics.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    /// Commands counted (forwarded, failed or rejected).
    pub total: u64,
    /// Commands that failed in transport or were rejected by the breaker.
    pub errors: u64,
    /// The latency histogram (microseconds); `None` before the first latency.
    pub histogram: Option<Histogram<u64>>,
}

/// What one sampling interval saw on one database.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// When the interval ended, in seconds since the Unix epoch.
    pub t: f64,
    /// Commands per second over the interval.
    pub ops: f64,
    /// Failed or rejected commands per second over the interval.
    pub errors: f64,
    /// Median latency over the interval, in milliseconds (`None`: no latency recorded).
    pub p50_ms: Option<f64>,
    /// 99th percentile latency over the interval, in milliseconds.
    pub p99_ms: Option<f64>,
    /// The breaker's state when the interval ended.
    pub circuit: State,
}

/// The last `capacity` samples of one database, and the reading they continue from.
#[derive(Debug)]
pub struct Ring {
    capacity: usize,
    last: Reading,
    samples: VecDeque<Sample>,
}

impl Ring {
    /// An empty ring of `capacity` samples (at least 1) starting from `baseline`.
    pub fn new(capacity: usize, baseline: Reading) -> Ring {
        let capacity = capacity.max(1);
        Ring {
            capacity,
            last: baseline,
            samples: VecDeque::with_capacity(capacity),
        }
    }

    /// Closes an interval of length `elapsed` ending at `t` with reading `now`:
    /// appends the sample (dropping the oldest when full) and keeps `now` as the
    /// next baseline.
    pub fn push(&mut self, t: f64, elapsed: Duration, now: Reading, circuit: State) {
        let reset = now.total < self.last.total || now.errors < self.last.errors;
        let secs = elapsed.as_secs_f64().max(1e-3);
        let delta = |now: u64, before: u64| if reset { now } else { now - before };
        let window = window(now.histogram.as_ref(), self.last.histogram.as_ref(), reset);
        let ms = |q: f64| {
            window
                .as_ref()
                .filter(|h| !h.is_empty())
                .map(|h| h.value_at_quantile(q) as f64 / 1000.0)
        };
        let sample = Sample {
            t,
            ops: delta(now.total, self.last.total) as f64 / secs,
            errors: delta(now.errors, self.last.errors) as f64 / secs,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            circuit,
        };
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.last = now;
    }

    /// The samples, oldest first.
    pub fn samples(&self) -> &VecDeque<Sample> {
        &self.samples
    }

    /// The newest sample.
    pub fn latest(&self) -> Option<&Sample> {
        self.samples.back()
    }
}

/// The latencies recorded between `before` and `now`: `now - before`, or all of
/// `now` when the statistics were reset in between.
fn window(
    now: Option<&Histogram<u64>>,
    before: Option<&Histogram<u64>>,
    reset: bool,
) -> Option<Histogram<u64>> {
    let now = now?;
    let Some(before) = before.filter(|b| !reset && b.len() <= now.len()) else {
        return Some(now.clone());
    };
    let mut w = now.clone();
    match w.subtract(before) {
        Ok(()) => Some(w),
        // A bucket holds fewer than before: reset and refilled in between.
        Err(_) => Some(now.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(latencies_us: &[u64]) -> Histogram<u64> {
        let mut h = Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("bounds");
        for &l in latencies_us {
            h.record(l).expect("in range");
        }
        h
    }

    fn reading(total: u64, errors: u64, latencies_us: &[u64]) -> Reading {
        Reading {
            total,
            errors,
            histogram: Some(hist(latencies_us)),
        }
    }

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn rates_and_windowed_percentiles() {
        let mut r = Ring::new(4, Reading::default());
        // 100 fast commands in the first second.
        let first: Vec<u64> = vec![100; 100];
        r.push(1.0, SEC, reading(100, 0, &first), State::Closed);
        // 10 slow ones in the next two seconds: the window sees only those.
        let mut both = first.clone();
        both.extend([20_000; 10]);
        r.push(3.0, 2 * SEC, reading(110, 4, &both), State::Open);
        let s: Vec<&Sample> = r.samples().iter().collect();
        assert_eq!(s[0].ops, 100.0);
        assert_eq!(s[0].p50_ms, Some(0.1));
        assert_eq!(s[1].ops, 5.0);
        assert_eq!(s[1].errors, 2.0);
        let p50 = s[1].p50_ms.expect("latencies in window");
        assert!(
            (p50 - 20.0).abs() < 0.2,
            "window p50 {p50} (cumulative would be 0.1)"
        );
        assert_eq!(s[1].circuit, State::Open);
    }

    #[test]
    fn idle_interval_has_no_percentiles() {
        let mut r = Ring::new(4, reading(5, 0, &[100; 5]));
        r.push(1.0, SEC, reading(5, 0, &[100; 5]), State::Closed);
        let s = r.latest().expect("a sample");
        assert_eq!((s.ops, s.p50_ms, s.p99_ms), (0.0, None, None));
    }

    #[test]
    fn reset_counts_since_reset_never_negative() {
        let mut r = Ring::new(4, reading(1000, 50, &[100; 1000]));
        // RESETSTATS, then 3 commands of 5 ms.
        r.push(1.0, SEC, reading(3, 1, &[5_000; 3]), State::Closed);
        let s = r.latest().expect("a sample");
        assert_eq!((s.ops, s.errors), (3.0, 1.0));
        let p99 = s.p99_ms.expect("latencies since reset");
        assert!((p99 - 5.0).abs() < 0.05, "p99 {p99}");
    }

    #[test]
    fn ring_keeps_the_newest() {
        let mut r = Ring::new(3, Reading::default());
        for i in 1..=5u64 {
            r.push(i as f64, SEC, reading(i, 0, &[]), State::Closed);
        }
        let ts: Vec<f64> = r.samples().iter().map(|s| s.t).collect();
        assert_eq!(ts, vec![3.0, 4.0, 5.0]);
    }
}
