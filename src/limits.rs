//! Process limits, as Redis handles them: the open-file limit (`RLIMIT_NOFILE`)
//! is raised at start toward what `max_clients` needs, `max_clients` is lowered
//! (with a warning) when it cannot be, a reserve of descriptors is kept for the
//! upstream connections the configuration may open, and running out of local
//! resources is told apart from an upstream failure. Also the rate limiter for
//! warnings that could otherwise repeat many times a second.
//!
//! The limit is read and set through `rustix` (safe wrappers of `getrlimit` and
//! `setrlimit`; the crate forbids `unsafe`).

use std::time::{Duration, Instant};

use crate::config::Config;

/// Descriptors kept for everything but clients and upstream connections: stdio,
/// the listeners, the runtime's epoll and wake-up descriptors, log files (Redis's
/// `CONFIG_MIN_RESERVED_FDS`).
pub const MIN_RESERVED_FDS: u64 = 32;

/// Upstream connections per database beyond its pools and shared slots: the
/// health probe, out-of-band connections (SCRIPT KILL …) and a margin.
pub const PER_DATABASE_HEADROOM: u64 = 4;

/// How many descriptors the upstream connections of `config` may need at most:
/// per database, both pools (RESP2 and RESP3) at their maximum size, both sets of
/// shared slots, and [`PER_DATABASE_HEADROOM`]. Subscriber and private (tracking)
/// connections are one per such client and are not included.
pub fn upstream_fds(config: &Config) -> u64 {
    config
        .databases
        .iter()
        .map(|d| {
            let u = &d.upstream;
            2 * u64::from(u.pool_size)
                + 2 * u64::from(u.mux_connections.max(1))
                + PER_DATABASE_HEADROOM
        })
        .sum()
}

/// What the proxy found and did about its open-file limit at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimits {
    /// `max_clients` as configured.
    pub configured_max_clients: usize,
    /// `max_clients` in force: the configured one, or what the limit allows.
    pub max_clients: usize,
    /// Descriptors kept out of the clients' share ([`MIN_RESERVED_FDS`] plus
    /// [`upstream_fds`]).
    pub reserved: u64,
    /// Descriptors one client may hold (2 with `auth_passthrough`: its own
    /// upstream connection).
    pub per_client: u64,
    /// The soft limit in force after start (`None`: unlimited or unknown).
    pub soft: Option<u64>,
    /// The hard limit (`None`: unlimited or unknown).
    pub hard: Option<u64>,
    /// The soft limit before the proxy raised it, if it did.
    pub raised_from: Option<u64>,
}

impl FdLimits {
    /// No limit applied: `max_clients` as configured (for a context built in code).
    pub fn unlimited(config: &Config) -> FdLimits {
        FdLimits {
            configured_max_clients: config.max_clients,
            max_clients: config.max_clients,
            reserved: MIN_RESERVED_FDS + upstream_fds(config),
            per_client: per_client(config),
            soft: None,
            hard: None,
            raised_from: None,
        }
    }

    /// Descriptors `max_clients` clients and the reserve need together.
    pub fn needed(&self) -> u64 {
        (self.configured_max_clients as u64)
            .saturating_mul(self.per_client)
            .saturating_add(self.reserved)
    }
}

fn per_client(config: &Config) -> u64 {
    if config.auth_passthrough {
        2
    } else {
        1
    }
}

/// The process's (soft, hard) open-file limits; `None` means unlimited.
#[cfg(unix)]
fn get_limit() -> (Option<u64>, Option<u64>) {
    let l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    (l.current, l.maximum)
}

#[cfg(unix)]
fn set_soft_limit(soft: u64, hard: Option<u64>) -> std::io::Result<()> {
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(soft),
            maximum: hard,
        },
    )
    .map_err(std::io::Error::from)
}

#[cfg(not(unix))]
fn get_limit() -> (Option<u64>, Option<u64>) {
    (None, None)
}

#[cfg(not(unix))]
fn set_soft_limit(_soft: u64, _hard: Option<u64>) -> std::io::Result<()> {
    Ok(())
}

/// Fits `max_clients` to the open-file limit, as Redis does at start: the soft
/// limit is raised toward `max_clients` + the reserve (never above the hard limit:
/// that is the operator's cap, which the proxy leaves alone even when it could
/// raise it); if that is not enough, `max_clients` is lowered to what fits and a
/// warning says so. `Err` when not even one client fits.
pub fn fit_max_clients(config: &Config) -> Result<FdLimits, String> {
    let (soft, hard) = get_limit();
    let mut fds = FdLimits {
        soft,
        hard,
        ..FdLimits::unlimited(config)
    };
    let needed = fds.needed();
    let Some(current) = soft else {
        return Ok(fds);
    };
    if current < needed {
        let target = hard.map_or(needed, |h| h.min(needed));
        if target > current {
            match set_soft_limit(target, hard) {
                Ok(()) => {
                    fds.soft = Some(target);
                    fds.raised_from = Some(current);
                    tracing::info!(
                        from = current,
                        to = target,
                        "raised the open files limit (soft RLIMIT_NOFILE) for max_clients {}",
                        config.max_clients
                    );
                }
                Err(e) => tracing::warn!(
                    "Server can't set maximum open files to {target} because of OS error: {e}."
                ),
            }
        }
    }
    let available = fds.soft.unwrap_or(u64::MAX);
    if available < needed {
        let fit = available.saturating_sub(fds.reserved) / fds.per_client;
        if fit < 1 {
            return Err(format!(
                "the open files limit ({available}) is too low: the upstream connections the configuration may open and the proxy itself need {} descriptors, which leaves none for clients; raise 'ulimit -n' or lower max_connections / mux_connections",
                fds.reserved
            ));
        }
        fds.max_clients = usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .min(config.max_clients);
        tracing::warn!(
            "You requested max_clients of {} requiring at least {needed} max file descriptors ({} kept for upstream connections and the proxy itself).",
            config.max_clients,
            fds.reserved
        );
        tracing::warn!(
            "Current maximum open files is {available} (hard limit {}). max_clients has been reduced to {} to compensate for low ulimit. If you need higher max_clients increase 'ulimit -n'.",
            hard.map_or_else(|| "unlimited".to_string(), |h| h.to_string()),
            fds.max_clients
        );
    }
    Ok(fds)
}

/// Whether an I/O error means this process ran out of a local resource (file
/// descriptors, socket buffers, memory) rather than that the peer failed.
pub fn is_local_exhaustion(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        use rustix::io::Errno;
        matches!(
            Errno::from_io_error(e),
            Some(Errno::MFILE | Errno::NFILE | Errno::NOBUFS | Errno::NOMEM)
        )
    }
    #[cfg(not(unix))]
    {
        e.kind() == std::io::ErrorKind::OutOfMemory
    }
}

/// Lets a repeated warning through at most once per `every`, counting the ones it
/// held back so the next line can say how many.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// At most one line per `every`.
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` if a line may be logged now (`n`: lines held back since the last
    /// one); `None` if this one is held back.
    pub fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(at) if now.duration_since(at) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

/// How often a repeated warning (accept errors, refused clients) may be logged.
pub const WARN_EVERY: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_line_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_millis(50));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.ready(), Some(2));
        assert_eq!(t.ready(), None);
    }

    #[test]
    fn the_reserve_counts_every_connection_the_config_may_open() {
        let mut config = Config::for_upstream("127.0.0.1", 6379);
        config.databases.truncate(2);
        for d in &mut config.databases {
            d.upstream.pool_size = 3;
            d.upstream.mux_connections = 2;
        }
        // Per database: 2 pools of 3, 2 x 2 shared slots, 4 headroom.
        assert_eq!(upstream_fds(&config), 2 * (6 + 4 + 4));
        let fds = FdLimits::unlimited(&config);
        assert_eq!(fds.reserved, 32 + 28);
        assert_eq!(fds.needed(), config.max_clients as u64 + 60);
        config.auth_passthrough = true;
        assert_eq!(
            FdLimits::unlimited(&config).needed(),
            2 * config.max_clients as u64 + 60
        );
    }

    #[test]
    fn local_exhaustion_is_told_from_peer_failures() {
        let emfile = std::io::Error::from_raw_os_error(24);
        let enfile = std::io::Error::from_raw_os_error(23);
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_local_exhaustion(&emfile));
        assert!(is_local_exhaustion(&enfile));
        assert!(!is_local_exhaustion(&refused));
    }
}
