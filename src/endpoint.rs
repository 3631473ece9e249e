//! Where one database's upstream is *now*: for a Sentinel-backed database, the
//! current primary's address and a generation number that grows with every change,
//! shared by every connection kind of that database (shared slots, pools, pub/sub,
//! out-of-band, health probes, `check`). Setup (`upstream/connect.rs`) reads it; the
//! resolver and watcher (`upstream/sentinel.rs`) write it. No I/O here.
//!
//! A standalone database also carries one (cheap, never used): its address is the
//! fixed `host`/`port` of its configuration.
//!
//! It also keeps what the upstream says it *is* ([`Identity`]: the `server`,
//! `version`, `role` and `modules` of its `HELLO` reply; `upstream::identity`), so
//! that the proxy's own `HELLO` reply names the client's Redis.
//!
//! And whether a client paused its writes (`CLIENT PAUSE`, sent through the proxy):
//! until then, a request Redis would hold back goes on a connection of its own, so
//! that it does not hold up the other clients' reads on a shared connection.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

/// A shared handle; clones see the same address.
#[derive(Debug, Clone)]
pub struct Endpoint {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The current primary (`None`: not known yet, or found not to be the primary).
    addr: Mutex<Option<(String, u16)>>,
    /// The last primary ever known (for counting failovers).
    last: Mutex<Option<(String, u16)>>,
    /// Bumped whenever the address changes or is forgotten; receivers are told.
    generation: watch::Sender<u64>,
    /// Changes of primary seen (a different address than the last known one).
    failovers: AtomicU64,
    /// Wakes the watcher: something suggests the primary moved.
    suspect: Notify,
    /// One resolution at a time (connections that find no address wait for it).
    resolving: tokio::sync::Mutex<()>,
    /// What the upstream said it is, when last asked (shared by the nodes of a
    /// cluster with the database's endpoint: [`Endpoint::sharing_identity`]).
    identity: Arc<Mutex<Option<Arc<Identity>>>>,
    /// A cluster node's endpoint ([`Endpoint::sharing_identity`]): what it
    /// learns is recorded with the role `master`, whatever the node is now.
    as_primary: bool,
    /// Until when writes are paused ([`Endpoint::pause_writes`]): milliseconds
    /// since [`epoch`], 0 for not paused.
    paused_until: AtomicU64,
    /// Until when every command is held back (`CLIENT PAUSE … ALL`), likewise.
    all_paused_until: AtomicU64,
}

/// What noting a pause changed ([`Endpoint::pause_writes`], [`Endpoint::unpause`]),
/// to take it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Noted {
    before: u64,
    after: u64,
    all_before: u64,
    all_after: u64,
}

/// The origin of [`Inner::paused_until`]'s clock.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// How long until the time in `until` ([`now_ms`]'s clock; 0 for none), if later.
#[inline]
fn left(until: &AtomicU64) -> Option<Duration> {
    let until = until.load(Relaxed);
    if until == 0 {
        return None;
    }
    let now = now_ms();
    (now < until).then(|| Duration::from_millis(until - now))
}

/// Milliseconds since [`epoch`].
fn now_ms() -> u64 {
    u64::try_from(epoch().elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The upstream's own account of itself, from a `HELLO` reply: what a client's
/// `HELLO` to the proxy shows (clients check features by `version` and `modules`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `server`: `redis` (or e.g. `valkey`).
    pub server: Vec<u8>,
    /// `version`: `7.0.15`.
    pub version: Vec<u8>,
    /// `role`: `master`, or `replica` for a standalone upstream that is one.
    pub role: Vec<u8>,
    /// `modules`, encoded as a RESP2 client gets it (an array of flat arrays) and
    /// as a RESP3 client gets it (an array of maps).
    pub modules: [Vec<u8>; 2],
}

/// Endpoints always compare equal: they are run-time state, not settings, so two
/// configurations compare by what they configure.
impl PartialEq for Endpoint {
    fn eq(&self, _: &Endpoint) -> bool {
        true
    }
}

impl Eq for Endpoint {}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::new()
    }
}

impl Endpoint {
    /// An endpoint with no address known yet (generation 0).
    pub fn new() -> Endpoint {
        Endpoint::with_identity(Arc::default(), false)
    }

    /// A new endpoint (another server's) whose identity is `self`'s: what one
    /// learns, both know. A cluster's nodes share the database's, so a client's
    /// `HELLO` names the cluster's Redis (`redis`, its version) whichever node
    /// told it, and its role is `master` even when a replica told it (a
    /// subscriber's home node may be one, a primary may have been demoted): the
    /// client sees the cluster as one primary.
    pub fn sharing_identity(&self) -> Endpoint {
        Endpoint::with_identity(self.inner.identity.clone(), true)
    }

    fn with_identity(identity: Arc<Mutex<Option<Arc<Identity>>>>, as_primary: bool) -> Endpoint {
        Endpoint {
            inner: Arc::new(Inner {
                addr: Mutex::new(None),
                last: Mutex::new(None),
                generation: watch::channel(0).0,
                failovers: AtomicU64::new(0),
                suspect: Notify::new(),
                resolving: tokio::sync::Mutex::new(()),
                identity,
                as_primary,
                paused_until: AtomicU64::new(0),
                all_paused_until: AtomicU64::new(0),
            }),
        }
    }

    /// The current address and its generation, if known.
    pub fn current(&self) -> Option<(String, u16, u64)> {
        let addr = self.inner.addr.lock().unwrap_or_else(|p| p.into_inner());
        let gen = *self.inner.generation.borrow();
        addr.as_ref().map(|(h, p)| (h.clone(), *p, gen))
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// A receiver that is told of every later change of generation.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// Records `host:port` as the primary. Returns the previous primary when this
    /// is a change of primary (a failover), `None` when it is the same one or the
    /// first ever known.
    pub fn set(&self, host: &str, port: u16) -> Option<(String, u16)> {
        let new = (host.to_string(), port);
        let mut addr = self.inner.addr.lock().unwrap_or_else(|p| p.into_inner());
        if addr.as_ref() == Some(&new) {
            return None;
        }
        *addr = Some(new.clone());
        self.inner.generation.send_modify(|g| *g += 1);
        drop(addr);
        let mut last = self.inner.last.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.replace(new.clone());
        match previous {
            Some(p) if p != new => {
                self.inner.failovers.fetch_add(1, Relaxed);
                Some(p)
            }
            _ => None,
        }
    }

    /// The address of generation `generation` turned out not to be the primary
    /// (its `ROLE` said so): it is forgotten, so the next connection asks the
    /// sentinels again, and the watcher is woken. A later generation is kept.
    pub fn forget(&self, generation: u64) {
        let mut addr = self.inner.addr.lock().unwrap_or_else(|p| p.into_inner());
        if *self.inner.generation.borrow() == generation && addr.is_some() {
            *addr = None;
            self.inner.generation.send_modify(|g| *g += 1);
        }
        drop(addr);
        self.suspect();
    }

    /// Something suggests the primary moved (`-READONLY`, a failed connect): the
    /// watcher asks the sentinels again soon.
    pub fn suspect(&self) {
        self.inner.suspect.notify_one();
    }

    /// Waits until [`Endpoint::suspect`] is called (a call made before counts).
    pub async fn suspected(&self) {
        self.inner.suspect.notified().await
    }

    /// Changes of primary seen since start.
    pub fn failovers(&self) -> u64 {
        self.inner.failovers.load(Relaxed)
    }

    /// What the upstream said it is when last asked (`None`: not yet, or the
    /// server has no `HELLO`).
    pub fn identity(&self) -> Option<Arc<Identity>> {
        self.inner
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records what the upstream said it is (kept when unchanged).
    pub fn learn(&self, mut identity: Identity) {
        if self.inner.as_primary {
            identity.role = b"master".to_vec();
        }
        let mut slot = self
            .inner
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if slot.as_deref() != Some(&identity) {
            *slot = Some(Arc::new(identity));
        }
    }

    /// A client paused the server's writes for `time` (`CLIENT PAUSE time
    /// [WRITE|ALL]`; either mode holds writes back): as Redis, the later end of
    /// two pauses wins. Noted when the request goes out; [`Endpoint::take_back`]
    /// undoes it if Redis refuses the request.
    pub fn pause_writes(&self, time: Duration) -> Noted {
        self.pause(time, false)
    }

    /// `CLIENT PAUSE time [ALL]`: every command is held back, writes included
    /// (as Redis, the stronger mode of two pauses wins, until the later end).
    pub fn pause_all(&self, time: Duration) -> Noted {
        self.pause(time, true)
    }

    fn pause(&self, time: Duration, all: bool) -> Noted {
        let ms = u64::try_from(time.as_millis()).unwrap_or(u64::MAX);
        let until = now_ms().saturating_add(ms).saturating_add(1);
        let before = self.inner.paused_until.fetch_max(until, Relaxed);
        let all_before = if all {
            self.inner.all_paused_until.fetch_max(until, Relaxed)
        } else {
            self.inner.all_paused_until.load(Relaxed)
        };
        Noted {
            before,
            after: before.max(until),
            all_before,
            all_after: if all {
                all_before.max(until)
            } else {
                all_before
            },
        }
    }

    /// `CLIENT UNPAUSE`. While everything is paused (`ALL`) Redis holds the
    /// `UNPAUSE` back too, until the pause ends: it changes nothing.
    pub fn unpause(&self) -> Noted {
        if self.all_paused().is_some() {
            let load = |a: &AtomicU64| a.load(Relaxed);
            let (w, a) = (
                load(&self.inner.paused_until),
                load(&self.inner.all_paused_until),
            );
            return Noted {
                before: w,
                after: w,
                all_before: a,
                all_after: a,
            };
        }
        let before = self.inner.paused_until.swap(0, Relaxed);
        let all_before = self.inner.all_paused_until.swap(0, Relaxed);
        Noted {
            before,
            after: 0,
            all_before,
            all_after: 0,
        }
    }

    /// Undoes a noted pause (or unpause) that Redis refused (`-NOPERM` for a
    /// user without `CLIENT PAUSE`, …), unless another one changed it since.
    pub fn take_back(&self, noted: Noted) {
        let i = &self.inner;
        let _ = i
            .paused_until
            .compare_exchange(noted.after, noted.before, Relaxed, Relaxed);
        let _ = i.all_paused_until.compare_exchange(
            noted.all_after,
            noted.all_before,
            Relaxed,
            Relaxed,
        );
    }

    /// How long writes stay paused, if they are (one atomic load when not).
    #[inline]
    pub fn writes_paused(&self) -> Option<Duration> {
        left(&self.inner.paused_until)
    }

    /// How long every command stays held back (`CLIENT PAUSE … ALL`), if it is.
    #[inline]
    pub fn all_paused(&self) -> Option<Duration> {
        left(&self.inner.all_paused_until)
    }

    /// How long to wait for a reply sent now, given the command `timeout`: Redis
    /// answers nothing until a `CLIENT PAUSE … ALL` made through the proxy ends
    /// (the server is up), so its time left is allowed on top.
    #[inline]
    pub fn reply_within(&self, timeout: Duration) -> Duration {
        timeout + self.all_paused().unwrap_or_default()
    }

    /// Held while resolving, so concurrent connects ask the sentinels once.
    pub async fn resolving(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inner.resolving.lock().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pause_of_everything_is_noted_apart_and_taken_back_alike() {
        let e = Endpoint::new();
        let hour = Duration::from_secs(3600);
        let _writes = e.pause_writes(hour);
        assert!(e.writes_paused().is_some());
        assert_eq!(e.all_paused(), None);
        let refused = e.pause_all(Duration::from_secs(60));
        assert!(e.all_paused().is_some());
        e.take_back(refused);
        assert_eq!(e.all_paused(), None);
        assert!(e
            .writes_paused()
            .is_some_and(|d| d > Duration::from_secs(3000)));
        // Redis holds an UNPAUSE back while everything is paused.
        let _all = e.pause_all(Duration::from_secs(60));
        e.unpause();
        assert!(e.all_paused().is_some() && e.writes_paused().is_some());
        let e = Endpoint::new();
        let _writes = e.pause_writes(hour);
        e.unpause();
        assert_eq!((e.writes_paused(), e.all_paused()), (None, None));
    }

    #[test]
    fn a_refused_pause_is_taken_back_unless_another_came_since() {
        let e = Endpoint::new();
        let hour = Duration::from_secs(3600);
        let refused = e.pause_writes(hour);
        assert!(e.writes_paused().is_some());
        e.take_back(refused);
        assert_eq!(e.writes_paused(), None);

        // A pause that ran, then a shorter one refused: the first stays.
        let _ran = e.pause_writes(hour);
        let refused = e.pause_writes(Duration::from_secs(1));
        e.take_back(refused);
        assert!(e
            .writes_paused()
            .is_some_and(|d| d > Duration::from_secs(3000)));

        // A refused pause, then a later one that ran: taking back the first
        // leaves the second.
        e.unpause();
        let refused = e.pause_writes(Duration::from_secs(60));
        let _ran = e.pause_writes(hour);
        e.take_back(refused);
        assert!(e
            .writes_paused()
            .is_some_and(|d| d > Duration::from_secs(3000)));

        // A refused UNPAUSE leaves the pause in force.
        let refused = e.unpause();
        assert_eq!(e.writes_paused(), None);
        e.take_back(refused);
        assert!(e
            .writes_paused()
            .is_some_and(|d| d > Duration::from_secs(3000)));
    }

    #[test]
    fn generations_and_failovers() {
        let e = Endpoint::new();
        assert_eq!(e.current(), None);
        assert_eq!(e.set("a", 1), None);
        assert_eq!(e.current(), Some(("a".into(), 1, 1)));
        assert_eq!(e.set("a", 1), None, "the same primary is no change");
        assert_eq!(e.generation(), 1);
        e.forget(0);
        assert!(
            e.current().is_some(),
            "an older generation's verdict is ignored"
        );
        e.forget(1);
        assert_eq!(e.current(), None);
        assert_eq!(e.generation(), 2);
        assert_eq!(e.set("a", 1), None, "found again: not a failover");
        assert_eq!(e.failovers(), 0);
        assert_eq!(e.set("b", 2), Some(("a".into(), 1)));
        assert_eq!(e.failovers(), 1);
        assert_eq!(e.current(), Some(("b".into(), 2, 4)));
    }

    #[test]
    fn write_pauses_end_at_the_later_deadline_or_unpause() {
        let e = Endpoint::new();
        assert_eq!(e.writes_paused(), None);
        e.pause_writes(Duration::from_secs(60));
        e.pause_writes(Duration::from_millis(1));
        let left = e.writes_paused().expect("paused");
        assert!(left > Duration::from_secs(59), "{left:?}");
        e.unpause();
        assert_eq!(e.writes_paused(), None);
        e.pause_writes(Duration::ZERO);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(e.writes_paused(), None, "over");
    }
}
