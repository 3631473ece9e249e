//! Exponential back-off with jitter.
//!
//! Retry `attempt` (0 = the first retry) waits `base · 2^attempt`, capped at `max`, minus
//! a random share of up to `jitter` of that delay ("subtractive" jitter: the delay never
//! exceeds the capped exponential value, and with `jitter = 0` it is deterministic).
//! Jitter spreads the retries of many clients that failed together, so they do not hit a
//! recovering Redis in lock-step.

use std::time::Duration;

use crate::config::ResilienceConfig;

/// Jitter used by [`Backoff::from`]`(&ResilienceConfig)`: a delay is cut by up to half.
pub const DEFAULT_JITTER: f64 = 0.5;

/// Why [`Backoff::try_new`] refused its arguments.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum InvalidBackoff {
    /// The largest delay is below the first one.
    #[error("maximum back-off delay ({max:?}) must not be less than the base delay ({base:?})")]
    MaxBelowBase {
        /// The base delay given.
        base: Duration,
        /// The maximum delay given.
        max: Duration,
    },
    /// The jitter is not a number in `0.0..=1.0`.
    #[error("back-off jitter ({0}) must be between 0.0 and 1.0")]
    JitterOutOfRange(f64),
}

/// Exponential back-off settings. Immutable and cheap to copy; randomness comes from
/// `fastrand`'s thread-local generator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
}

impl Backoff {
    /// Checked constructor: `max` must not be less than `base`, and `jitter` must lie in
    /// `0.0..=1.0` (NaN is refused).
    pub fn try_new(base: Duration, max: Duration, jitter: f64) -> Result<Backoff, InvalidBackoff> {
        if max < base {
            return Err(InvalidBackoff::MaxBelowBase { base, max });
        }
        if !(0.0..=1.0).contains(&jitter) {
            return Err(InvalidBackoff::JitterOutOfRange(jitter));
        }
        Ok(Backoff { base, max, jitter })
    }

    /// The first delay (before jitter).
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The largest delay (before jitter).
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The largest share of a delay that jitter may remove, in `0.0..=1.0`.
    pub fn jitter(&self) -> f64 {
        self.jitter
    }

    /// The delay before retry `attempt` without jitter: `base · 2^attempt`, capped at
    /// `max`. Never overflows: any attempt whose delay would exceed `max` gets `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        1u32.checked_shl(attempt)
            .and_then(|factor| self.base.checked_mul(factor))
            .map_or(self.max, |d| d.min(self.max))
    }

    /// The delay before retry `attempt` (0 = the first retry): [`Backoff::ceiling`] minus a
    /// random amount of up to `jitter` times it. With zero jitter the result is exactly
    /// the ceiling; otherwise it lies in `ceiling · (1 - jitter) ..= ceiling`.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self.ceiling(attempt);
        if self.jitter == 0.0 {
            return ceiling;
        }
        // fastrand::f64() is in [0, 1), so the cut is in [0, jitter · ceiling) ⊆ [0, ceiling].
        // The fallible conversion and saturating subtraction keep rounding from ever panicking.
        let cut =
            Duration::try_from_secs_f64(ceiling.as_secs_f64() * self.jitter * fastrand::f64())
                .unwrap_or(Duration::ZERO);
        ceiling.saturating_sub(cut)
    }
}

impl From<&ResilienceConfig> for Backoff {
    /// `retry_base_delay` and `retry_max_delay` with [`DEFAULT_JITTER`]. The config
    /// loader already refuses a maximum below the base; should one slip through, the
    /// maximum is raised to the base rather than failing.
    fn from(r: &ResilienceConfig) -> Self {
        Backoff {
            base: r.retry_base_delay,
            max: r.retry_max_delay.max(r.retry_base_delay),
            jitter: DEFAULT_JITTER,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn zero_jitter_sequence() {
        let b = Backoff::try_new(secs(0.5), secs(10.0), 0.0).expect("valid");
        let got: Vec<Duration> = (0..7).map(|a| b.delay(a)).collect();
        let want: Vec<Duration> = [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
            .iter()
            .map(|&s| secs(s))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn from_config_defaults() {
        let b = Backoff::from(&ResilienceConfig::default());
        assert_eq!(b.base(), secs(0.5));
        assert_eq!(b.max(), secs(10.0));
        assert_eq!(b.jitter(), DEFAULT_JITTER);
        assert_eq!(b.ceiling(0), secs(0.5));
        assert_eq!(b.ceiling(6), secs(10.0));
    }

    #[test]
    fn from_config_with_max_below_base_is_repaired() {
        let r = ResilienceConfig {
            retry_base_delay: secs(2.0),
            retry_max_delay: secs(1.0),
            ..ResilienceConfig::default()
        };
        let b = Backoff::from(&r);
        assert_eq!((b.base(), b.max()), (secs(2.0), secs(2.0)));
    }

    #[test]
    fn jitter_bounds() {
        let b = Backoff::try_new(Duration::from_millis(100), secs(10.0), 0.5).expect("valid");
        for attempt in 0..10 {
            let ceiling = b.ceiling(attempt);
            let floor = ceiling / 2;
            let mut seen_below_ceiling = false;
            for _ in 0..200 {
                let d = b.delay(attempt);
                assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
                assert!(d >= floor, "attempt {attempt}: {d:?} < {floor:?}");
                seen_below_ceiling |= d < ceiling;
            }
            assert!(
                seen_below_ceiling,
                "jitter never applied at attempt {attempt}"
            );
        }
    }

    #[test]
    fn full_jitter_stays_non_negative() {
        let b = Backoff::try_new(secs(1.0), secs(1.0), 1.0).expect("valid");
        for _ in 0..1000 {
            assert!(b.delay(0) <= secs(1.0));
        }
    }

    #[test]
    fn huge_attempts_do_not_overflow() {
        let b = Backoff::try_new(secs(0.5), secs(10.0), 0.0).expect("valid");
        for attempt in [31, 32, 33, 63, 64, 100, u32::MAX] {
            assert_eq!(b.delay(attempt), secs(10.0), "attempt {attempt}");
        }
        let jittered = Backoff::try_new(secs(0.5), secs(10.0), 0.5).expect("valid");
        let d = jittered.delay(100);
        assert!(d >= secs(5.0) && d <= secs(10.0));
        // A maximum as large as Duration allows: the multiplication itself overflows.
        let big = Backoff::try_new(secs(1.0), Duration::MAX, 1.0).expect("valid");
        assert_eq!(big.ceiling(100), Duration::MAX);
        assert!(big.delay(100) <= Duration::MAX);
        assert_eq!(big.ceiling(31), secs(2f64.powi(31)));
    }

    #[test]
    fn zero_base_is_allowed() {
        let b = Backoff::try_new(Duration::ZERO, Duration::ZERO, 0.5).expect("valid");
        assert_eq!(b.delay(0), Duration::ZERO);
        assert_eq!(b.delay(100), Duration::ZERO);
    }

    #[test]
    fn invalid_configs_rejected() {
        assert_eq!(
            Backoff::try_new(secs(2.0), secs(1.0), 0.5),
            Err(InvalidBackoff::MaxBelowBase {
                base: secs(2.0),
                max: secs(1.0)
            })
        );
        assert_eq!(
            Backoff::try_new(secs(1.0), secs(2.0), 1.5),
            Err(InvalidBackoff::JitterOutOfRange(1.5))
        );
        assert_eq!(
            Backoff::try_new(secs(1.0), secs(2.0), -0.1),
            Err(InvalidBackoff::JitterOutOfRange(-0.1))
        );
        assert!(Backoff::try_new(secs(1.0), secs(2.0), f64::NAN).is_err());
        assert!(Backoff::try_new(secs(1.0), secs(2.0), f64::INFINITY).is_err());
        assert!(Backoff::try_new(secs(1.0), secs(1.0), 0.0).is_ok());
        assert!(Backoff::try_new(secs(1.0), secs(2.0), 1.0).is_ok());
        let msg = Backoff::try_new(secs(1.0), secs(2.0), 2.0)
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            msg,
            Err("back-off jitter (2) must be between 0.0 and 1.0".to_string())
        );
    }
}
