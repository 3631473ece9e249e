//! Busy polling: after work, the runtime polls its sockets for a short window
//! instead of sleeping, so the next request or reply is picked up without the
//! proxy being woken.
//!
//! A proxied request crosses four sockets instead of two; at low concurrency
//! each of them used to cost a wakeup of a sleeping process, and on a virtual
//! machine a wakeup across CPUs costs tens of microseconds (an interrupt
//! between virtual CPUs). After each read from a client or an upstream
//! ([`kick`]), a spinner task keeps the current-thread runtime polling I/O
//! (`yield_now`: the scheduler then polls epoll with a zero timeout instead of
//! blocking) until `busy_poll_us` passed without a read. A sleeping process
//! costs nothing, so the window is short; it starts only after work.
//!
//! Spinning takes a CPU that the client and Redis may want. The spinner reads
//! its thread's run-queue wait (`/proc/thread-self/schedstat`) every
//! [`CHECK_EVERY`]: when the thread waited for a CPU more than
//! [`CONTENDED_PERCENT`] of that time, others wanted the CPU it held, and it
//! stops spinning for [`BACK_OFF`]; each turn it also calls `sched_yield`, so
//! a process woken on its CPU runs first. It stays off where it cannot help or
//! cannot tell (see [`decide`]): one CPU, a cgroup CPU quota (spinning would
//! spend it), a multi-threaded runtime, no schedstat.
//!
//! What it costs: CPU while requests come and go (a client pacing 5,000
//! requests a second one at a time: 30 % of a core instead of 10 %); where CPU
//! time is billed a quota turns it off, or `busy_poll_us: 0`. What it must
//! not cost: latency. The run-queue reading is taken after the spinner's first
//! turn, not before: read first, it delayed the very request that started the
//! window, and paced clients got p50 ~100 µs instead of ~50 µs.
//! BENCHMARKS.md, "Busy polling", has the figures.
//!
//! Everything here is per runtime thread (a `thread_local`); the figures for
//! `PROXY INFO` are process-wide.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How often the spinner checks whether its CPU is wanted by others.
pub const CHECK_EVERY: Duration = Duration::from_micros(500);
/// Run-queue wait, in percent of the time spun, above which spinning stops.
pub const CONTENDED_PERCENT: u64 = 5;
/// How long spinning stays off after contention was seen.
pub const BACK_OFF: Duration = Duration::from_millis(20);
/// Default `busy_poll_us`.
pub const DEFAULT_WINDOW_US: u32 = 50;

struct Local {
    on: Cell<bool>,
    kicks: Cell<u64>,
    parked: RefCell<Option<Waker>>,
}

thread_local! {
    static LOCAL: Local = const {
        Local { on: Cell::new(false), kicks: Cell::new(0), parked: RefCell::new(None) }
    };
}

static SPINS: AtomicU64 = AtomicU64::new(0);
static SPIN_NANOS: AtomicU64 = AtomicU64::new(0);
static BACK_OFFS: AtomicU64 = AtomicU64::new(0);

/// Work arrived on this thread (bytes read from a client or an upstream): keep
/// polling for another window. Costs a thread-local read where no spinner runs.
#[inline]
pub fn kick() {
    LOCAL.with(|l| {
        if l.on.get() {
            l.kicks.set(l.kicks.get().wrapping_add(1));
            if let Some(w) = l.parked.borrow_mut().take() {
                w.wake();
            }
        }
    });
}

/// Process-wide figures: spin periods, time spent spinning, back-offs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Figures {
    pub spins: u64,
    pub spin_time: Duration,
    pub back_offs: u64,
}

pub fn figures() -> Figures {
    Figures {
        spins: SPINS.load(Ordering::Relaxed),
        spin_time: Duration::from_nanos(SPIN_NANOS.load(Ordering::Relaxed)),
        back_offs: BACK_OFFS.load(Ordering::Relaxed),
    }
}

/// Why busy polling is off, or its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    On(Duration),
    Off(&'static str),
}

/// What the host looks like, for [`decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Host {
    pub cpus: usize,
    pub current_thread: bool,
    pub cpu_quota: bool,
    pub schedstat: bool,
}

impl Host {
    /// The host this process runs on (call from the runtime's thread).
    pub fn probe() -> Host {
        Host {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            current_thread: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread),
            cpu_quota: cgroup_quota(),
            schedstat: run_queue_wait().is_some(),
        }
    }
}

/// Whether to spin, for a configured window of `window_us` (0 = off).
pub fn decide(window_us: u32, host: Host) -> Decision {
    if window_us == 0 {
        Decision::Off("busy_poll_us is 0")
    } else if host.cpus < 2 {
        Decision::Off("one CPU")
    } else if host.cpu_quota {
        Decision::Off("cgroup CPU quota")
    } else if !host.current_thread {
        Decision::Off("--threads above 1")
    } else if !host.schedstat {
        Decision::Off("no /proc/thread-self/schedstat")
    } else {
        Decision::On(Duration::from_micros(window_us.into()))
    }
}

/// A cgroup CPU limit on this process: cgroup v2 `cpu.max` other than `max …`,
/// or cgroup v1 `cpu.cfs_quota_us` other than -1.
fn cgroup_quota() -> bool {
    let v2 = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|s| {
            let path = s.lines().find_map(|l| l.strip_prefix("0::"))?.to_string();
            std::fs::read_to_string(format!(
                "/sys/fs/cgroup{}/cpu.max",
                path.trim_end_matches('/')
            ))
            .ok()
        });
    if let Some(max) = v2 {
        return quota_in_cpu_max(&max);
    }
    std::fs::read_to_string("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        .ok()
        .is_some_and(|q| q.trim() != "-1")
}

/// `cpu.max` holds `QUOTA PERIOD`; `max` as the quota means no limit.
fn quota_in_cpu_max(text: &str) -> bool {
    text.split_whitespace().next().is_some_and(|q| q != "max")
}

/// This thread's scheduler statistics, opened once by the thread that reads
/// them (`thread-self` names the opening thread); each [`RunQueue::wait`] is
/// one `pread`, not the open, stat, reads and close of reading the path anew.
struct RunQueue(std::fs::File);

impl RunQueue {
    fn open() -> Option<RunQueue> {
        std::fs::File::open("/proc/thread-self/schedstat")
            .ok()
            .map(RunQueue)
    }

    /// Nanoseconds this thread has waited on a run queue (runnable, not
    /// running): the second of `schedstat`'s three numbers.
    fn wait(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        let text = std::str::from_utf8(buf.get(..n)?).ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    }
}

/// Nanoseconds this thread has waited on a run queue, read once.
fn run_queue_wait() -> Option<u64> {
    RunQueue::open()?.wait()
}

/// Others wanted the CPU: the thread waited `waited` of `elapsed` on a run queue.
fn contended(waited: u64, elapsed: Duration) -> bool {
    waited.saturating_mul(100) > (elapsed.as_nanos() as u64).saturating_mul(CONTENDED_PERCENT)
}

/// Waits for the next [`kick`] on this thread.
async fn next_kick(seen: u64) {
    poll_fn(|cx| {
        LOCAL.with(|l| {
            if l.kicks.get() != seen {
                Poll::Ready(())
            } else {
                *l.parked.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    })
    .await
}

/// Clears the thread's spinner when it ends.
struct Spinning;

impl Drop for Spinning {
    fn drop(&mut self) {
        LOCAL.with(|l| {
            l.on.set(false);
            l.parked.borrow_mut().take();
        });
    }
}

/// The spinner: spawn it on a current-thread runtime where [`decide`] said
/// `On(window)`; it runs until `shutdown`. One per thread: a second returns
/// at once (the first serves every proxy on the thread, e.g. in tests).
pub async fn spin(window: Duration, shutdown: CancellationToken) {
    if LOCAL.with(|l| l.on.replace(true)) {
        return;
    }
    let _spinning = Spinning;
    // The spinner runs on this thread for good (a current-thread runtime).
    let Some(run_queue) = RunQueue::open() else {
        return;
    };
    let kicks = || LOCAL.with(|l| l.kicks.get());
    loop {
        tokio::select! {
            _ = next_kick(kicks()) => {}
            _ = shutdown.cancelled() => return,
        }
        let start = Instant::now();
        let (mut seen, mut until) = (kicks(), start + window);
        // The first reading is taken after the first turn, so that the tasks
        // the read woke run before it.
        let (mut checked, mut waited) = (start, None);
        let mut back_off = false;
        loop {
            // Lets a process woken on this CPU (the client, Redis) run first.
            std::thread::yield_now();
            tokio::task::yield_now().await;
            let now = Instant::now();
            if waited.is_none() {
                (checked, waited) = (now, run_queue.wait());
            } else if now.duration_since(checked) >= CHECK_EVERY {
                let w = run_queue.wait();
                if let (Some(a), Some(b)) = (waited, w) {
                    if contended(b.saturating_sub(a), now.duration_since(checked)) {
                        back_off = true;
                        break;
                    }
                }
                (checked, waited) = (now, w);
            }
            let k = kicks();
            if k != seen {
                (seen, until) = (k, now + window);
            } else if now >= until {
                break;
            }
        }
        SPINS.fetch_add(1, Ordering::Relaxed);
        SPIN_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if back_off {
            BACK_OFFS.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(BACK_OFF).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        cpus: 2,
        current_thread: true,
        cpu_quota: false,
        schedstat: true,
    };

    #[test]
    fn on_only_where_it_can_help_and_tell() {
        assert_eq!(decide(50, HOST), Decision::On(Duration::from_micros(50)));
        assert!(matches!(decide(0, HOST), Decision::Off(_)));
        let unfit = [
            Host { cpus: 1, ..HOST },
            Host {
                cpu_quota: true,
                ..HOST
            },
            Host {
                current_thread: false,
                ..HOST
            },
            Host {
                schedstat: false,
                ..HOST
            },
        ];
        for host in unfit {
            assert!(matches!(decide(50, host), Decision::Off(_)), "{host:?}");
        }
    }

    #[test]
    fn a_quota_is_anything_but_max() {
        assert!(!quota_in_cpu_max("max 100000\n"));
        assert!(quota_in_cpu_max("50000 100000\n"));
        assert!(!quota_in_cpu_max(""));
    }

    #[test]
    fn contention_is_a_share_of_the_time_spun() {
        let ms = Duration::from_millis(1);
        assert!(!contended(0, ms));
        assert!(!contended(50_000, ms)); // 5 %: not above
        assert!(contended(50_001, ms));
        assert!(contended(u64::MAX, ms));
    }

    #[test]
    fn this_thread_has_a_run_queue_wait() {
        // Linux with schedstat (CONFIG_SCHED_INFO), as on the CI machines.
        assert!(run_queue_wait().is_some());
    }

    #[test]
    fn one_open_file_gives_fresh_readings() {
        let rq = RunQueue::open().expect("schedstat");
        let first = rq.wait().expect("a reading");
        // Wait on a run queue for sure: more runnable threads than CPUs, each
        // spinning, for a bounded time.
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut later = first;
        while later == first && Instant::now() < deadline {
            let spinners: Vec<_> = (0..cpus * 2)
                .map(|_| {
                    std::thread::spawn(|| {
                        let until = Instant::now() + Duration::from_millis(30);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            let until = Instant::now() + Duration::from_millis(30);
            while Instant::now() < until {
                std::hint::spin_loop();
            }
            spinners.into_iter().for_each(|t| t.join().expect("spun"));
            later = rq.wait().expect("a reading");
        }
        assert!(later > first, "{first} then {later}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_kick_wakes_the_waiting_spinner_and_kicks_elsewhere_do_nothing() {
        // No spinner on this thread: kicks are not counted.
        kick();
        assert_eq!(LOCAL.with(|l| l.kicks.get()), 0);
        LOCAL.with(|l| l.on.set(true));
        let waiting = tokio::spawn(next_kick(0));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        kick();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .expect("ran");
        LOCAL.with(|l| l.on.set(false));
    }
}
