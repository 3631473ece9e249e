//! What every client session shares: the configuration and router in force (one
//! immutable snapshot, replaced whole by a reload), the table of clients and the
//! proxy-wide counters.
//!
//! **Reloads.** The configuration and the router built from it form one [`Live`]
//! snapshot. A reload builds the next one completely, then publishes it with one
//! swap; nothing in a published snapshot ever changes. A session keeps the
//! snapshot it took and compares its generation with [`Context::generation`] (one
//! atomic load) at each batch: only when they differ does it take the new one (a
//! read lock, once per reload), at a point where nothing of its own is in flight
//! on the old one. So no session ever sees half of a reload.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clients::Clients;
use crate::config::Config;
use crate::router::Router;
use crate::stats::ProxyStats;

/// One generation of the configuration in force and the router built from it.
#[derive(Debug)]
pub struct Live {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Databases and their upstreams.
    pub router: Router,
    /// 1 at start, one more per successful reload.
    pub generation: u64,
    /// When this configuration was loaded (Unix seconds).
    pub loaded_at: u64,
    /// [`config_hash`] of `config`.
    pub hash: String,
    /// Cancelled when a reload replaces this snapshot (wakes idle sessions, so
    /// they let go of databases that changed).
    replaced: CancellationToken,
}

impl Live {
    /// A snapshot of `config` and its `router`.
    pub fn new(config: Config, router: Router, generation: u64) -> Live {
        Live {
            hash: config_hash(&config),
            config: Arc::new(config),
            router,
            generation,
            loaded_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            replaced: CancellationToken::new(),
        }
    }

    /// Cancelled when a reload replaces this snapshot.
    pub fn replaced(&self) -> &CancellationToken {
        &self.replaced
    }
}

/// What a reload request is answered with: a summary, or why nothing changed.
pub type ReloadResult = Result<String, String>;

/// A request to reload the configuration from its source (`PROXY RELOAD`).
pub type ReloadRequest = oneshot::Sender<ReloadResult>;

/// Shared, read-mostly state of a running proxy.
#[derive(Debug)]
pub struct Context {
    /// The snapshot in force.
    live: RwLock<Arc<Live>>,
    /// Its generation (read without the lock).
    generation: AtomicU64,
    /// Proxy-wide counters.
    pub stats: ProxyStats,
    /// Every open client session (CLIENT LIST / KILL / UNBLOCK).
    pub clients: Arc<Clients>,
    /// The open-file limit and the `max_clients` in force (see `limits`).
    pub fds: crate::limits::FdLimits,
    /// `PROXY SLOWLOG`.
    pub slowlog: crate::slowlog::SlowLog,
    /// Subscriptions in progress, which a `PUBLISH` waits for.
    pub publish_order: Arc<crate::publish_order::PublishOrder>,
    /// The address the listener is bound to (a reload may move it).
    local_addr: RwLock<SocketAddr>,
    /// Where `PROXY RELOAD` sends its request (the server's reload task).
    reload: mpsc::UnboundedSender<ReloadRequest>,
    /// Whether the runtime busy-polls after reads (decided at start).
    pub busy_poll: crate::busy_poll::Decision,
}

impl Context {
    /// A context whose first snapshot is `live`.
    pub fn new(
        live: Live,
        fds: crate::limits::FdLimits,
        local_addr: SocketAddr,
        reload: mpsc::UnboundedSender<ReloadRequest>,
    ) -> Context {
        let busy_poll =
            crate::busy_poll::decide(live.config.busy_poll_us, crate::busy_poll::Host::probe());
        let slowlog = crate::slowlog::SlowLog::new(
            live.config.slowlog_threshold,
            live.config.slowlog_max_len,
        );
        Context {
            generation: AtomicU64::new(live.generation),
            live: RwLock::new(Arc::new(live)),
            stats: Default::default(),
            clients: Default::default(),
            fds,
            slowlog,
            publish_order: Default::default(),
            busy_poll,
            local_addr: RwLock::new(local_addr),
            reload,
        }
    }

    /// The snapshot in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The generation of the snapshot in force (one atomic load).
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Publishes `next` (built completely beforehand) and wakes the sessions
    /// waiting on the one it replaces.
    pub fn publish(&self, next: Live) {
        let generation = next.generation;
        let old = {
            let mut live = self.live.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *live, Arc::new(next))
        };
        self.generation.store(generation, Ordering::Release);
        old.replaced.cancel();
    }

    /// The address the (plain) listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        *self.local_addr.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a new listener address (a reload moved it).
    pub fn set_local_addr(&self, addr: SocketAddr) {
        *self.local_addr.write().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    /// Asks the server to reload the configuration from its source; `None` when
    /// the proxy is shutting down.
    pub fn request_reload(&self) -> Option<oneshot::Receiver<ReloadResult>> {
        let (tx, rx) = oneshot::channel();
        self.reload.send(tx).ok().map(|()| rx)
    }
}

/// A stable hash of a resolved configuration, as 16 hex digits: FNV-1a over its
/// masked rendering (without the line naming the file) and its secrets, so a
/// changed password changes the hash without the hash revealing it.
pub fn config_hash(config: &Config) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    };
    let rendered = config.render_masked();
    for line in rendered.lines().filter(|l| !l.starts_with('#')) {
        feed(line.as_bytes());
    }
    let secrets = [&config.client_password, &config.admin_password]
        .into_iter()
        .chain(config.databases.iter().map(|d| &d.upstream.password));
    for s in secrets {
        feed(
            s.as_ref()
                .map_or(b"-".as_slice(), |s| s.expose().as_bytes()),
        );
    }
    format!("{h:016x}")
}

/// A context seen through one snapshot: `view.config` and `view.router` are the
/// snapshot's, everything else the context's (through `Deref`).
#[derive(Clone, Copy)]
pub struct View<'a> {
    ctx: &'a Context,
    /// The snapshot.
    pub live: &'a Live,
    /// Its configuration.
    pub config: &'a Config,
    /// Its router.
    pub router: &'a Router,
}

impl<'a> View<'a> {
    /// `ctx` seen through `live`.
    pub fn new(ctx: &'a Context, live: &'a Live) -> View<'a> {
        View {
            ctx,
            live,
            config: &live.config,
            router: &live.router,
        }
    }
}

impl std::ops::Deref for View<'_> {
    type Target = Context;

    fn deref(&self) -> &Context {
        self.ctx
    }
}
