//! The listeners (plain TCP and, with `client_tls`, TLS): accept clients (the TLS
//! handshake in the client's own task), enforce the connection limit, and shut down
//! gracefully (stop accepting, let sessions deliver in-flight replies within a
//! bounded drain, then return).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::context::Context;
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
    metrics_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    accept: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Binds `config.listen` (unless `listen: null`) and `config.client_tls`'s
    /// address, and starts serving on the current tokio runtime.
    pub async fn start(config: Config) -> std::io::Result<Proxy> {
        crate::router::validate_deny_commands(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let fds = crate::limits::fit_max_clients(&config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let plain = match config.plain_listener {
            true => Some(bind(config.listen).await?),
            false => None,
        };
        let tls = match &config.client_tls {
            Some(t) => {
                let server = ServerTls::new(&t.cert_file, &t.key_file, t.ca_file.as_deref())
                    .map_err(|(_, e)| {
                        std::io::Error::new(
                            std::io::ErrorKind::InvalidInput,
                            format!("client_tls: {e}"),
                        )
                    })?;
                Some((bind(t.listen).await?, Arc::new(server)))
            }
            None => None,
        };
        let tls_addr = match &tls {
            Some((l, _)) => Some(l.local_addr()?),
            None => None,
        };
        let local_addr = match (&plain, tls_addr) {
            (Some(l), _) => l.local_addr()?,
            (None, Some(a)) => a,
            (None, None) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "nothing to listen on: the plain listener is off (listen: null) and client_tls is not set",
                ))
            }
        };
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
        let shutdown = CancellationToken::new();
        let slowlog =
            crate::slowlog::SlowLog::new(config.slowlog_threshold, config.slowlog_max_len);
        let ctx = Arc::new(Context {
            slowlog,
            router: Router::new(&config, &shutdown),
            config: Arc::new(config),
            stats: Default::default(),
            clients: Default::default(),
            fds,
            local_addr,
        });
        let metrics_addr = match ctx.config.metrics_listen {
            Some(addr) => match crate::metrics::serve(addr, ctx.clone(), shutdown.clone()).await {
                Ok(a) => Some(a),
                Err(e) => {
                    shutdown.cancel();
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("cannot serve metrics on {addr}: {e}"),
                    ));
                }
            },
            None => None,
        };
        let sessions = TaskTracker::new();
        // Session ids are unique across both listeners.
        let ids = Arc::new(AtomicU64::new(1));
        let mut accept = Vec::new();
        let listeners = plain
            .map(|l| (l, None))
            .into_iter()
            .chain(tls.map(|(l, t)| (l, Some(t))));
        for (listener, tls) in listeners {
            accept.push(tokio::spawn(accept_loop(
                listener,
                tls,
                ids.clone(),
                ctx.clone(),
                shutdown.clone(),
                sessions.clone(),
            )));
        }
        tokio::spawn(sample_ops(ctx.clone(), shutdown.clone()));
        if ctx.config.plain_listener {
            tracing::info!(listen = %local_addr, databases = ctx.router.databases().len(), "redis-sidecar listening");
        }
        if let Some(addr) = tls_addr {
            tracing::info!(listen = %addr, databases = ctx.router.databases().len(), "redis-sidecar listening (TLS)");
        }
        if let Some(addr) = metrics_addr {
            tracing::info!(%addr, "metrics at http://{addr}/metrics");
        }
        Ok(Proxy {
            metrics_addr,
            tls_addr,
            ctx,
            shutdown,
            sessions,
            accept,
        })
    }

    /// The address the proxy listens on (the TLS listener's with `listen: null`).
    pub fn local_addr(&self) -> SocketAddr {
        self.ctx.local_addr
    }

    /// The address of the TLS listener (`client_tls`), if any.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Where `/metrics` is served, if enabled.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Shared state (for reports and tests).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Stops accepting, lets open sessions deliver the replies they are waiting for
    /// (at most `shutdown_timeout`), then returns. Returns `true` if every session
    /// finished within the drain time.
    pub async fn shutdown(self) -> bool {
        self.shutdown.cancel();
        for accept in self.accept {
            let _ = accept.await;
        }
        self.sessions.close();
        let drained = tokio::time::timeout(self.ctx.config.shutdown_timeout, self.sessions.wait())
            .await
            .is_ok();
        tracing::info!(drained, "redis-sidecar stopped");
        drained
    }
}

async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// How long a client on the TLS listener may take to complete its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The client's stream: as accepted, or after the TLS handshake (`None`: the
/// handshake failed or timed out, which concerns this client only).
async fn handshake(
    tcp: TcpStream,
    acceptor: Option<TlsAcceptor>,
    peer: SocketAddr,
    shutdown: &CancellationToken,
) -> Option<Stream> {
    let Some(acceptor) = acceptor else {
        return Some(Stream::Plain(tcp));
    };
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
    listener: TcpListener,
    tls: Option<Arc<ServerTls>>,
    ids: Arc<AtomicU64>,
    ctx: Arc<Context>,
    shutdown: CancellationToken,
    sessions: TaskTracker,
) {
    let mut accept_log = Throttle::new(WARN_EVERY);
    let mut full_log = Throttle::new(WARN_EVERY);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                accept_failed(&ctx, &e, &mut accept_log, &shutdown).await;
                continue;
            }
        };
        // The certificate files are checked for changes on every TLS accept.
        let acceptor = tls.as_ref().map(|t| t.acceptor());
        let refusal: Option<&'static [u8]> = if denied_by_protected_mode(&ctx, peer) {
            tracing::warn!(%peer, "rejecting client: protected mode (no client_password) serves only 127.0.0.1 and ::1");
            Some(PROTECTED_MODE_DENIED)
        } else if get(&ctx.stats.connected_clients) >= ctx.fds.max_clients as u64 {
            if let Some(suppressed) = full_log.ready() {
                tracing::warn!(%peer, max_clients = ctx.fds.max_clients, suppressed, "rejecting client: max_clients reached");
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
        let token = shutdown.clone();
        sessions.spawn(async move {
            if let Some(stream) = handshake(stream, acceptor, peer, &token).await {
                session::run(stream, ctx.clone(), id, token).await;
            }
            stats::sub(&ctx.stats.connected_clients, 1);
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
    let cfg = &ctx.config;
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

/// Samples the command counters once a second for `instantaneous_ops_per_sec`.
async fn sample_ops(ctx: Arc<Context>, shutdown: CancellationToken) {
    let total = |ctx: &Context| {
        ctx.router
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
        ctx.stats
            .ops_per_sec
            .store(now - last, std::sync::atomic::Ordering::Relaxed);
        last = now;
    }
}
