//! The listeners (plain TCP, with `client_tls` TLS, with `unixsocket` a Unix
//! domain socket): accept clients (the TLS handshake in the client's own task),
//! enforce the connection limit, and shut down gracefully (stop accepting, let
//! sessions deliver in-flight replies within a bounded drain, then return).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::{Context, Live, ReloadResult};
use crate::limits::{Throttle, WARN_EVERY};
use crate::router::Router;
use crate::session;
use crate::stats::{self, get};
use crate::tls::ServerTls;
use crate::transport::Stream;

/// A running proxy.
#[derive(Debug)]
pub struct Proxy {
    ctx: Arc<Context>,
    core: Arc<Core>,
}

/// Where a reload reads the configuration from: the binary's reads its file
/// again (with the environment and its command-line overrides).
pub type Source = Box<dyn Fn() -> Result<Config, String> + Send + Sync>;

/// What reloads need besides the context: the listeners, the reload source, and
/// what new accept loops are started with.
struct Core {
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    /// Session ids are unique across every listener, old and new.
    ids: Arc<AtomicU64>,
    /// The listeners; held for the whole of a reload, so reloads run one at a time.
    listeners: tokio::sync::Mutex<Listeners>,
    /// The listeners' bound addresses (plain, TLS, metrics), readable at any time.
    addrs: std::sync::Mutex<Addrs>,
    source: std::sync::Mutex<Option<Source>>,
}

type Addrs = (Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>);

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// The listeners in force.
#[derive(Default)]
struct Listeners {
    plain: Option<Bound>,
    tls: Option<Bound>,
    /// The `client_tls` settings the TLS listener was started with.
    tls_config: Option<crate::config::ClientTls>,
    metrics: Option<Bound>,
    /// The Unix socket listener (`unixsocket`): its path, and how to stop it.
    unix: Option<UnixBound>,
}

/// The Unix socket listener.
struct UnixBound {
    path: std::path::PathBuf,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// One listener: the configured address, the bound one, and how to stop it.
struct Bound {
    configured: SocketAddr,
    local: SocketAddr,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Bound {
    fn stop(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.stop.cancel();
        self.task.take()
    }
}

/// Listeners bound for a reload, not serving yet.
#[derive(Default)]
struct NewListeners {
    plain: Option<(SocketAddr, TcpListener)>,
    tls: Option<(SocketAddr, TcpListener, Arc<ServerTls>)>,
    metrics: Option<Bound>,
}

/// How long the start, or a reload, waits for new upstreams to say what they are.
const IDENTITY_WAIT: Duration = Duration::from_secs(1);

/// Asks the upstream of every database on an endpoint that does not know it yet
/// (all of them at start; those a reload put on a new endpoint) what server it is
/// (`upstream::identity`), before the proxy listens or the reload's snapshot is
/// published: a client's `HELLO` right away then names that server (its name and
/// version, by which clients choose features), not the proxy, as it did until the
/// database's health probe had asked (7 of 10 starts for a HELLO sent as soon as
/// the port accepted). At most [`IDENTITY_WAIT`]; one not answered by then (Redis
/// down) is asked by its probe.
async fn learn_identities(router: &Router) {
    let mut asks = tokio::task::JoinSet::new();
    for db in router.databases() {
        let cfg = &db.config.upstream;
        if cfg.cluster.is_none() && !cfg.replica_reads && cfg.endpoint.identity().is_none() {
            let cfg = cfg.clone();
            asks.spawn(async move { crate::upstream::identity::ask(&cfg).await });
        }
    }
    let all = async { while asks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(IDENTITY_WAIT, all).await;
}

fn invalid(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
}

impl Proxy {
    /// Binds `config.listen` (unless `listen: null`) and `config.client_tls`'s
    /// address, and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Proxy> {
        validate(&config).map_err(invalid)?;
        let fds = crate::limits::fit_max_clients(&config).map_err(invalid)?;
        let shutdown = CancellationToken::new();
        let (reload_tx, reload_rx) = tokio::sync::mpsc::unbounded_channel();
        // Nothing serves yet: the context's address is set once bound.
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        let router = Router::new(&config, &shutdown);
        // Before the first client can send HELLO (see `learn_identities`).
        learn_identities(&router).await;
        let live = Live::new(config, router, 1);
        let config = live.config.clone();
        let ctx = Arc::new(Context::new(live, fds, unbound, reload_tx));
        let core = Arc::new(Core {
            ctx: ctx.clone(),
            shutdown: shutdown.clone(),
            sessions: TaskTracker::new(),
            ids: Arc::new(AtomicU64::new(1)),
            listeners: Default::default(),
            addrs: Default::default(),
            source: std::sync::Mutex::new(None),
        });
        let bound = match core.bind_new(&config, &Listeners::default()).await {
            Ok(b) => b,
            Err(e) => {
                shutdown.cancel();
                return Err(e);
            }
        };
        warn_insecure(&config);
        {
            let mut listeners = core.listeners.lock().await;
            core.serve_new(&mut listeners, bound, &config);
            if let Some(path) = &config.unixsocket {
                let listener = match bind_unix(path, config.unixsocketperm) {
                    Ok(l) => l,
                    Err(e) => {
                        shutdown.cancel();
                        return Err(e);
                    }
                };
                let (stop, task) = core.serve(Listener::Unix(listener), None);
                tracing::info!(unixsocket = %path.display(), "redis-sidecar listening (Unix socket)");
                listeners.unix = Some(UnixBound {
                    path: path.clone(),
                    stop,
                    task,
                });
            }
        }
        if let crate::busy_poll::Decision::On(window) = ctx.busy_poll {
            tokio::spawn(crate::busy_poll::spin(window, shutdown.clone()));
        }
        tokio::spawn(sample_ops(ctx.clone(), shutdown.clone()));
        tokio::spawn(sweep_idle(ctx.clone(), shutdown.clone()));
        tokio::spawn(reload_requests(core.clone(), reload_rx));
        Ok(Proxy { ctx, core })
    }

    /// The address the proxy listens on (the TLS listener's with `listen: null`).
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr()
    }

    /// The address of the TLS listener (`client_tls`), if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.core.addrs().1
    }

    /// Where `/metrics` is served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.core.addrs().2
    }

    /// Shared state (for reports and tests).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Makes `source` what [`Proxy::reload`] (SIGHUP) and `PROXY RELOAD` read the
    /// configuration from.
    pub fn set_reload_source(&self, source: Source) {
        *self.core.source.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Reloads from `path` (and the environment's overrides), as the binary does.
    pub fn set_reload_file(&self, path: impl Into<std::path::PathBuf>) {
        let path = path.into();
        self.set_reload_source(Box::new(move || {
            Config::load(&path).map_err(|e| e.to_string())
        }));
    }

    /// Reads the configuration from the reload source and applies it (see
    /// [`Proxy::reload_with`]). `Err` says why nothing changed.
    pub async fn reload(&self) -> ReloadResult {
        self.core.reload().await
    }

    /// Validates `config` and, if it is good and every new listener could be
    /// bound, applies it in place; otherwise nothing changes. Counted and logged
    /// either way. `Ok` summarises what changed.
    pub async fn reload_with(&self, config: Config) -> ReloadResult {
        self.core.counted(Ok(config)).await
    }

    /// Stops accepting, lets open sessions deliver the replies they are waiting for
    /// (at most `shutdown_timeout`), then returns. Returns `true` if every session
    /// finished within the drain time.
    pub async fn shutdown(self) -> bool {
        let core = self.core;
        core.shutdown.cancel();
        self.ctx.clients.shut_down();
        let (tasks, unix) = {
            let mut guard = core.listeners.lock().await;
            let l = &mut *guard;
            let tasks: Vec<_> = [l.plain.as_mut(), l.tls.as_mut(), l.metrics.as_mut()]
                .into_iter()
                .flatten()
                .filter_map(Bound::stop)
                .collect();
            (tasks, l.unix.take())
        };
        for accept in tasks {
            let _ = accept.await;
        }
        if let Some(u) = unix {
            u.stop.cancel();
            let _ = u.task.await;
            // As Redis does on shutdown: the socket file goes.
            let _ = std::fs::remove_file(&u.path);
        }
        core.sessions.close();
        let drain = self.ctx.live().config.shutdown_timeout;
        let drained = tokio::time::timeout(drain, core.sessions.wait())
            .await
            .is_ok();
        tracing::info!(drained, "redis-sidecar stopped");
        drained
    }
}

/// Answers `PROXY RELOAD` requests, one at a time, until shutdown.
async fn reload_requests(
    core: Arc<Core>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::context::ReloadRequest>,
) {
    loop {
        let req = tokio::select! {
            _ = core.shutdown.cancelled() => return,
            r = rx.recv() => r,
        };
        let Some(reply) = req else { return };
        let result = core.reload().await;
        let _ = reply.send(result);
    }
}

impl Core {
    /// The bound addresses: plain, TLS, metrics.
    fn addrs(&self) -> Addrs {
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn reload(&self) -> ReloadResult {
        let loaded = {
            let source = self.source.lock().unwrap_or_else(|p| p.into_inner());
            match source.as_ref() {
                Some(read) => read(),
                None => Err("no configuration file to reload from: this proxy was started from a configuration built in code (use Proxy::set_reload_file)".to_string()),
            }
        };
        self.counted(loaded).await
    }

    /// Applies a loaded configuration (or reports why it could not be loaded),
    /// counting and logging the outcome.
    async fn counted(&self, loaded: Result<Config, String>) -> ReloadResult {
        let result = match loaded {
            Ok(config) => self.apply(config).await,
            Err(e) => Err(e),
        };
        let st = &self.ctx.stats;
        match &result {
            Ok(summary) => {
                stats::add(&st.config_reloads, 1);
                tracing::info!(
                    generation = self.ctx.generation(),
                    "configuration reloaded: {summary}"
                );
            }
            Err(e) => {
                stats::add(&st.config_reload_failures, 1);
                tracing::warn!(error = %e, "configuration reload refused; nothing changed");
            }
        }
        result
    }

    /// Validates, binds what moved, builds the next snapshot, publishes it, then
    /// moves the listeners.
    async fn apply(&self, config: Config) -> ReloadResult {
        validate(&config)?;
        let mut listeners = self.listeners.lock().await;
        let old = self.ctx.live();
        let mut notes = Vec::new();
        if config.max_clients != old.config.max_clients {
            notes.push("max_clients needs a restart (not applied)".to_string());
        }
        if config.slowlog_threshold != old.config.slowlog_threshold
            || config.slowlog_max_len != old.config.slowlog_max_len
        {
            notes.push("slowlog settings need a restart (not applied)".to_string());
        }
        if config.busy_poll_us != old.config.busy_poll_us {
            notes.push("busy_poll_us needs a restart (not applied)".to_string());
        }
        if config.log_format != old.config.log_format {
            notes.push("log_format needs a restart (not applied)".to_string());
        }
        if config.unixsocket != old.config.unixsocket
            || config.unixsocketperm != old.config.unixsocketperm
        {
            notes.push("unixsocket settings need a restart (not applied)".to_string());
        }
        let bound = self
            .bind_new(&config, &listeners)
            .await
            .map_err(|e| e.to_string())?;
        warn_insecure(&config);
        let router = old.router.reload(&config, &self.shutdown);
        learn_identities(&router).await;
        notes.splice(0..0, describe(&old.router, &router));
        let generation = old.generation + 1;
        let log_level =
            (config.log_level != old.config.log_level).then(|| config.log_level.clone());
        let next = Live::new(config, router, generation);
        let config = next.config.clone();
        self.ctx.publish(next);
        // Every session moves when it can; a parked one is woken for it.
        self.ctx.clients.raise_all(crate::clients::signal::RELOAD);
        old.router.retire_replaced(&self.ctx.live().router);
        drop(old);
        let moved = self.serve_new(&mut listeners, bound, &config);
        notes.extend(moved);
        if let Some(level) = log_level {
            match crate::logging::apply(&level, "configuration reload") {
                Ok(()) => notes.push(format!("log level {level}")),
                Err(e) => notes.push(format!("log level not changed: {e}")),
            }
        }
        if notes.is_empty() {
            notes.push("no change".to_string());
        }
        Ok(notes.join("; "))
    }

    /// Binds every listener `config` wants that `current` does not have (at its
    /// configured address): all of them, or none (the error).
    async fn bind_new(
        &self,
        config: &Config,
        current: &Listeners,
    ) -> std::io::Result<NewListeners> {
        let mut new = NewListeners::default();
        let want_plain = config.plain_listener.then_some(config.listen);
        if want_plain.is_some() && want_plain != current.plain.as_ref().map(|b| b.configured) {
            let addr = config.listen;
            new.plain = Some((addr, bind(addr).await?));
        }
        if config.client_tls != current.tls_config {
            if let Some(t) = &config.client_tls {
                if current
                    .tls
                    .as_ref()
                    .is_some_and(|b| b.configured == t.listen)
                {
                    return Err(invalid(format!(
                        "client_tls: new certificate or CA file paths on the same listen address {} need a restart (the files themselves are re-read when they change)",
                        t.listen
                    )));
                }
                let server = ServerTls::new(&t.cert_file, &t.key_file, t.ca_file.as_deref())
                    .map_err(|(_, e)| invalid(format!("client_tls: {e}")))?;
                new.tls = Some((t.listen, bind(t.listen).await?, Arc::new(server)));
            }
        }
        if config.metrics_listen.is_some()
            && config.metrics_listen != current.metrics.as_ref().map(|b| b.configured)
        {
            if let Some(addr) = config.metrics_listen {
                let stop = self.shutdown.child_token();
                match crate::metrics::serve(addr, self.ctx.clone(), stop.clone()).await {
                    Ok(local) => {
                        new.metrics = Some(Bound {
                            configured: addr,
                            local,
                            stop,
                            task: None,
                        })
                    }
                    Err(e) => {
                        return Err(std::io::Error::new(
                            e.kind(),
                            format!("cannot serve metrics on {addr}: {e}"),
                        ))
                    }
                }
            }
        }
        Ok(new)
    }

    /// Starts serving on the listeners just bound and stops those `config` no
    /// longer wants (their open connections stay). Returns what moved.
    fn serve_new(&self, l: &mut Listeners, new: NewListeners, config: &Config) -> Vec<String> {
        let mut moved = Vec::new();
        let databases = self.ctx.live().router.databases().len();
        let initial = l.plain.is_none() && l.tls.is_none();
        if let Some((configured, listener)) = new.plain {
            let local = listener.local_addr().unwrap_or(configured);
            if let Some(mut old) = l
                .plain
                .replace(self.accept(configured, local, listener, None))
            {
                old.stop();
                moved.push(format!("listening on {local} (was {})", old.local));
            }
            tracing::info!(listen = %local, databases, "redis-sidecar listening");
        } else if !config.plain_listener {
            if let Some(mut old) = l.plain.take() {
                old.stop();
                moved.push(format!("plain listener on {} closed", old.local));
            }
        }
        if let Some((configured, listener, tls)) = new.tls {
            let local = listener.local_addr().unwrap_or(configured);
            if let Some(mut old) =
                l.tls
                    .replace(self.accept(configured, local, listener, Some(tls)))
            {
                old.stop();
                moved.push(format!("TLS listening on {local} (was {})", old.local));
            }
            tracing::info!(listen = %local, databases, "redis-sidecar listening (TLS)");
        } else if config.client_tls.is_none() {
            if let Some(mut old) = l.tls.take() {
                old.stop();
                moved.push(format!("TLS listener on {} closed", old.local));
            }
        }
        l.tls_config.clone_from(&config.client_tls);
        if let Some(m) = new.metrics {
            let local = m.local;
            if let Some(mut old) = l.metrics.replace(m) {
                old.stop();
                moved.push(format!("metrics on {local} (was {})", old.local));
            }
            tracing::info!(addr = %local, "metrics at http://{local}/metrics");
        } else if config.metrics_listen.is_none() {
            if let Some(mut old) = l.metrics.take() {
                old.stop();
                moved.push(format!("metrics on {} closed", old.local));
            }
        }
        let addr = l.plain.as_ref().or(l.tls.as_ref()).map(|b| b.local);
        if let Some(addr) = addr {
            self.ctx.set_local_addr(addr);
        }
        let local = |b: &Option<Bound>| b.as_ref().map(|b| b.local);
        *self.addrs.lock().unwrap_or_else(|p| p.into_inner()) =
            (local(&l.plain), local(&l.tls), local(&l.metrics));
        if initial {
            moved.clear();
        }
        moved
    }

    /// Starts an accept loop on the TCP `listener`.
    fn accept(
        &self,
        configured: SocketAddr,
        local: SocketAddr,
        listener: TcpListener,
        tls: Option<Arc<ServerTls>>,
    ) -> Bound {
        let (stop, task) = self.serve(Listener::Tcp(listener), tls);
        Bound {
            configured,
            local,
            stop,
            task: Some(task),
        }
    }

    /// Starts an accept loop on `listener`: how to stop it, and its task.
    fn serve(
        &self,
        listener: Listener,
        tls: Option<Arc<ServerTls>>,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = self.shutdown.child_token();
        let task = tokio::spawn(accept_loop(
            listener,
            tls,
            self.ids.clone(),
            self.ctx.clone(),
            Tokens {
                stop: stop.clone(),
                shutdown: self.shutdown.clone(),
            },
            self.sessions.clone(),
        ));
        (stop, task)
    }
}

/// What a reload does to the databases, for its summary.
fn describe(old: &Router, new: &Router) -> Vec<String> {
    let mut notes = Vec::new();
    for db in new.databases() {
        match old.get(i64::from(db.config.index)) {
            None => notes.push(format!("database {} added", db.label())),
            Some(o) if Arc::ptr_eq(o, db) => {}
            Some(o) if !o.config.upstream.same_endpoint(&db.config.upstream) => {
                notes.push(format!(
                    "database {} moved to {} db {}",
                    db.label(),
                    db.config.upstream.address(),
                    db.config.upstream.db
                ))
            }
            Some(o) if o.same_connections(db) => {
                notes.push(format!("database {} settings changed", db.label()))
            }
            Some(_) => notes.push(format!(
                "database {} settings changed (new connections)",
                db.label()
            )),
        }
    }
    for db in old.databases() {
        if new.get(i64::from(db.config.index)).is_none() {
            notes.push(format!("database {} removed", db.label()));
        }
    }
    notes
}

/// The validation a configuration gets before it is used (at start and on each
/// reload), besides what loading checks: something to listen on, and
/// `deny_commands` names (with the file and line of a bad name when the
/// configuration came from a file).
fn validate(config: &Config) -> Result<(), String> {
    if !config.plain_listener && config.client_tls.is_none() && config.unixsocket.is_none() {
        return Err("nothing to listen on: the plain listener is off (listen: null) and neither client_tls nor unixsocket is set".into());
    }
    crate::router::validate_deny_commands(config).map_err(|e| {
        let Some(path) = &config.source else {
            return e;
        };
        let line = crate::router::unknown_deny_command(config).and_then(|name| {
            let text = std::fs::read_to_string(path).ok()?;
            text.lines()
                .position(|l| !l.trim_start().starts_with('#') && l.contains(name.as_str()))
                .map(|i| i + 1)
        });
        match line {
            Some(n) => format!("{}, line {n}: {e}", path.display()),
            None => format!("{}: {e}", path.display()),
        }
    })
}

/// Warns about every upstream whose certificate is not verified.
fn warn_insecure(config: &Config) {
    for db in &config.databases {
        if db
            .upstream
            .tls
            .as_ref()
            .is_some_and(|t| t.insecure_skip_verify)
        {
            tracing::warn!(
                database = db.name(),
                upstream = %db.upstream.address(),
                "tls.insecure_skip_verify is true: the upstream's certificate is NOT verified; anyone on the path can impersonate it"
            );
        }
    }
}

/// An accept loop's tokens: `stop` ends the loop (shutdown, or a reload moved
/// the listener); `shutdown` is the proxy's, which its sessions get.
struct Tokens {
    stop: CancellationToken,
    shutdown: CancellationToken,
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Binds the Unix socket listener at `path` (a socket left there by an earlier
/// run is replaced, as Redis does; any other file is not) with `perm`'s mode.
fn bind_unix(path: &std::path::Path, perm: Option<u32>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let failed = |e: std::io::Error| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on Unix socket {}: {e}", path.display()),
        )
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path).map_err(failed)?,
        Ok(_) => {
            return Err(failed(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is there",
            )))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path).map_err(failed)?;
    if let Some(mode) = perm {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    }
    Ok(listener)
}

/// How long a client on the TLS listener may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What an accept loop listens on: TCP (plain or TLS), or the Unix socket.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A client as accepted.
enum Incoming {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// The next client, and its address over TCP (a Unix socket's peer is
    /// unnamed, and local).
    async fn accept(&self) -> std::io::Result<(Incoming, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Incoming::Tcp(s), Some(a))),
            Listener::Unix(l) => l.accept().await.map(|(s, _)| (Incoming::Unix(s), None)),
        }
    }
}

impl Incoming {
    fn stream(self) -> Stream {
        match self {
            Incoming::Tcp(t) => Stream::Plain(t),
            Incoming::Unix(u) => Stream::Unix(Box::new(u)),
        }
    }
}

/// A client's address for the log (`unix` for the Unix socket's).
fn shown(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "unix".to_string(), |p| p.to_string())
}

/// The client's stream: as accepted, or after the TLS handshake (`None`: the
/// handshake failed or timed out, which concerns this client only).
async fn handshake(
    incoming: Incoming,
    acceptor: Option<TlsAcceptor>,
    peer: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> Option<Stream> {
    // (Only TLS listeners have an acceptor, and they are TCP.)
    let (acceptor, tcp) = match (acceptor, incoming) {
        (Some(a), Incoming::Tcp(tcp)) => (a, tcp),
        (_, incoming) => return Some(incoming.stream()),
    };
    let peer = shown(peer);
    let _ = tcp.set_nodelay(true);
    let accepted = tokio::select! {
        _ = shutdown.cancelled() => return None,
        // Boxed: the handshake's large future is not part of every client's task.
        r = Box::pin(tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))) => r,
    };
    match accepted {
        Ok(Ok(tls)) => Some(Stream::Tls(Box::new(tls.into()))),
        Ok(Err(e)) => {
            tracing::info!(%peer, error = %e, "client TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(%peer, "client TLS handshake timed out after {TLS_HANDSHAKE_TIMEOUT:?}");
            None
        }
    }
}

async fn accept_loop(
    listener: Listener,
    tls: Option<Arc<ServerTls>>,
    ids: Arc<AtomicU64>,
    ctx: Arc<Context>,
    tokens: Tokens,
    sessions: TaskTracker,
) {
    let Tokens { stop, shutdown } = tokens;
    let mut accept_log = Throttle::new(WARN_EVERY);
    let mut full_log = Throttle::new(WARN_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(&ctx, &e, &mut accept_log, &stop).await;
                continue;
            }
        };
        // The certificate files are checked for changes on every TLS accept.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        // (A Unix socket client is local: protected mode serves it.)
        let refusal: Option<&'static [u8]> = if peer
            .is_some_and(|p| denied_by_protected_mode(&ctx, p))
        {
            tracing::warn!(peer = %shown(peer), "rejecting client: protected mode (no client_password) serves only 127.0.0.1 and ::1");
            Some(PROTECTED_MODE_DENIED)
        } else if get(&ctx.stats.connected_clients) >= ctx.fds.max_clients as u64 {
            if let Some(suppressed) = full_log.ready() {
                tracing::warn!(peer = %shown(peer), max_clients = ctx.fds.max_clients, suppressed, "rejecting client: max_clients reached");
            }
            Some(b"-ERR max number of clients reached\r\n")
        } else {
            None
        };
        if let Some(message) = refusal {
            stats::add(&ctx.stats.rejected_connections, 1);
            let token = shutdown.clone();
            tokio::spawn(async move {
                if let Some(mut stream) = handshake(stream, acceptor, peer, &token).await {
                    let _ = stream.write_all(message).await;
                    let _ = stream.shutdown().await;
                }
            });
            continue;
        }
        let id = ids.fetch_add(1, Ordering::Relaxed);
        stats::add(&ctx.stats.total_connections, 1);
        stats::add(&ctx.stats.connected_clients, 1);
        let ctx = ctx.clone();
        // A plain client's task is only its session (which decrements
        // `connected_clients` when it ends): an idle client's task is only its
        // parked session (see `session::run`), no handshake in it.
        let Some(acceptor) = acceptor else {
            sessions.spawn(session::run(stream.stream(), ctx, id));
            continue;
        };
        let token = shutdown.clone();
        sessions.spawn(async move {
            match handshake(stream, Some(acceptor), peer, &token).await {
                Some(stream) => session::run(stream, ctx, id).await,
                None => stats::sub(&ctx.stats.connected_clients, 1),
            }
        });
    }
}

/// A failed `accept`: counted, logged at most once per [`WARN_EVERY`] (with how
/// many were held back), and, unless it concerned only that one connection, a
/// pause of [`ACCEPT_PAUSE`], so that a process out of file descriptors neither
/// spins nor floods its log (the pending clients wait in the backlog until
/// descriptors are free again).
async fn accept_failed(
    ctx: &Context,
    e: &std::io::Error,
    log: &mut Throttle,
    shutdown: &CancellationToken,
) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    stats::add(&ctx.stats.accept_errors, 1);
    let local = crate::limits::is_local_exhaustion(e);
    if let Some(suppressed) = log.ready() {
        if local {
            tracing::warn!(error = %e, suppressed, connected_clients = get(&ctx.stats.connected_clients), max_clients = ctx.fds.max_clients, fd_limit = ?ctx.fds.soft, "accept failed: out of file descriptors or memory; pausing accepts");
        } else {
            tracing::warn!(error = %e, suppressed, "accept failed");
        }
    }
    if !matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(ACCEPT_PAUSE) => {}
        }
    }
}

/// The pause after an `accept` that failed for want of resources (as tokio's
/// documentation suggests and hyper does).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// What a client refused by protected mode reads before the connection closes.
const PROTECTED_MODE_DENIED: &[u8] = b"-DENIED redis-sidecar is running in protected mode because protected_mode is enabled and no client_password is set. In this mode connections are only accepted from the loopback interface (127.0.0.1 and ::1). To serve other clients, set client_password (recommended), or set protected_mode: false if the network is trusted.\r\n";

/// Redis's protected mode: with no password, a client that is not on the
/// loopback interface (exactly 127.0.0.1 or ::1, as Redis checks) is refused.
fn denied_by_protected_mode(ctx: &Context, peer: std::net::SocketAddr) -> bool {
    let live = ctx.live();
    let cfg = &live.config;
    if !cfg.protected_mode || cfg.client_password.is_some() {
        return false;
    }
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(std::net::IpAddr::V6(v6), std::net::IpAddr::V4),
        v4 => v4,
    };
    ip != std::net::IpAddr::from([127, 0, 0, 1])
        && ip != std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
}

/// Asks idle sessions to park, every [`crate::clients::SWEEP_EVERY`].
async fn sweep_idle(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(crate::clients::SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ctx.clients.sweep();
    }
}

/// Samples the command counters once a second for `instantaneous_ops_per_sec`.
async fn sample_ops(ctx: Arc<Context>, shutdown: CancellationToken) {
    let total = |ctx: &Context| {
        ctx.live()
            .router
            .databases()
            .iter()
            .map(|d| get(&d.stats.commands))
            .sum::<u64>()
            + get(&ctx.stats.local_commands)
    };
    let mut last = total(&ctx);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        ctx.clients.tick();
        let now = total(&ctx);
        ctx.stats.ops_per_sec.store(
            now.saturating_sub(last),
            std::sync::atomic::Ordering::Relaxed,
        );
        last = now;
    }
}
