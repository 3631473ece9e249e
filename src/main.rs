//! The `redis-sidecar` binary: flags, config, logging, signals.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use redis_sidecar::config::Config;
use redis_sidecar::server::Proxy;

/// jemalloc: an idle client's few small allocations stay packed in its size
/// classes, and with its background thread (see [`return_freed_memory`]) what a
/// burst freed goes back to the system while the proxy is idle (BENCHMARKS.md,
/// "Idle clients, session 8").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// `--version`: `redis-sidecar 0.1.0 (commit abc123456789)` (commit from build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("REDIS_SIDECAR_BUILD_COMMIT"),
    ")"
);

/// A RESP proxy that gives unmodified Redis clients per-database pools and resilience.
#[derive(Debug, Parser)]
#[command(name = "redis-sidecar", version = VERSION, about)]
struct Args {
    /// YAML configuration file.
    #[arg(long, short = 'c', default_value = "config/redis-databases.yaml")]
    config: PathBuf,
    /// Listen address (overrides `listen` in the config and REDIS_SIDECAR_LISTEN).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Prometheus endpoint address (overrides `metrics_listen`); `off` disables it.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Log level (overrides `log_level`; RUST_LOG overrides both).
    #[arg(long)]
    log_level: Option<String>,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Serve clients from any address even without client_password (overrides
    /// protected_mode: true; for containers whose published port is the boundary).
    #[arg(long)]
    no_protected_mode: bool,
    /// Validate the configuration, print it resolved (secrets masked) and exit.
    #[arg(long)]
    check_config: bool,
    /// Tokio worker threads: 1 runs everything on one thread (like twemproxy),
    /// 0 means one per core.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Print the Redis `ACL SETUSER` line(s) for a user that cannot run what
    /// deny_commands refuse, so Redis enforces the list too (scripts included).
    /// Lines go to stdout (`redis-sidecar acl | redis-cli`), notes to stderr.
    Acl {
        /// YAML configuration file.
        #[arg(long, short = 'c', default_value = "config/redis-databases.yaml")]
        config: PathBuf,
        /// The user's name (default: the configured upstream username, else sidecar).
        #[arg(long)]
        user: Option<String>,
        /// The password to put in the line (default: a <password> placeholder).
        #[arg(long, conflicts_with = "with_password")]
        password: Option<String>,
        /// Put the configured upstream password in the line.
        #[arg(long)]
        with_password: bool,
    },
    /// Migration readiness: connect to every configured database's upstream as the
    /// proxy would (AUTH, upstream_db), measure PING, read version and role, check
    /// that upstream_db exists, that the commands the proxy sends are not renamed
    /// away, and that the database is writable. Exits 0 only when every database
    /// is ready, 1 otherwise (one line per problem), 2 on a bad config.
    Check {
        /// YAML configuration file.
        #[arg(long, short = 'c', default_value = "config/redis-databases.yaml")]
        config: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Skip the write test (SET + DEL of a unique key with a 60 s expiry).
        #[arg(long)]
        read_only: bool,
    },
}

/// How long jemalloc keeps freed pages for reuse before returning them (its
/// default is 10 s: a client's 100 MiB request would hold its buffer that long).
const DIRTY_DECAY_MS: isize = 1_000;

/// Makes jemalloc give freed memory back within about a second, by itself: the
/// decay time of every arena (those to come, and those that exist) is
/// [`DIRTY_DECAY_MS`], and its background thread (one) purges on time; without
/// it jemalloc purges only when the proxy allocates, so an idle proxy kept what
/// a burst of clients freed.
fn return_freed_memory() {
    use tikv_jemalloc_ctl::{Access, AsName};
    let mut set = b"arenas.dirty_decay_ms\0".name().write(DIRTY_DECAY_MS);
    if let Ok(n) = tikv_jemalloc_ctl::arenas::narenas::read() {
        for i in 0..n {
            let key = format!("arena.{i}.dirty_decay_ms\0");
            // (An arena not in use yet is created with the default above.)
            let _ = key.as_bytes().name().write(DIRTY_DECAY_MS);
        }
    }
    set = set
        .and_then(|()| tikv_jemalloc_ctl::max_background_threads::write(1))
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true));
    if let Err(e) = set {
        tracing::warn!(error = %e, "jemalloc not set to return freed memory on its own");
    }
}

/// Loads and validates the config; on failure prints why and gives the exit code.
fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    let config = Config::load(path).map_err(|e| {
        eprintln!("redis-sidecar: {e}");
        ExitCode::from(2)
    })?;
    if let Err(e) = redis_sidecar::router::validate_deny_commands(&config) {
        eprintln!("redis-sidecar: {}: {e}", path.display());
        return Err(ExitCode::from(2));
    }
    Ok(config)
}

/// `redis-sidecar check`.
fn check(config: &std::path::Path, json: bool, read_only: bool) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-sidecar: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = redis_sidecar::check::CheckOptions { read_only };
    let report = rt.block_on(redis_sidecar::check::run(&config, opts));
    if json {
        print!("{}", report.render_json());
    } else {
        print!("{}", report.render_text());
    }
    if report.ready() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// `redis-sidecar acl`.
fn acl(config: &std::path::Path, opts: redis_sidecar::acl::AclOptions) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (out, notes) = redis_sidecar::acl::report(&config, &opts);
    print!("{out}");
    eprint!("{notes}");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Acl {
            config,
            user,
            password,
            with_password,
        }) => {
            let opts = redis_sidecar::acl::AclOptions {
                user,
                password,
                with_password,
            };
            return acl(&config, opts);
        }
        Some(Command::Check {
            config,
            json,
            read_only,
        }) => return check(&config, json, read_only),
        None => {}
    }
    let mut config = match load_config(&args.config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let metrics = match args.metrics_listen.as_deref() {
        None => None,
        Some("off") => Some(None),
        Some(m) => match m.parse() {
            Ok(a) => Some(Some(a)),
            Err(_) => {
                eprintln!(
                    "redis-sidecar: --metrics-listen: invalid address {m:?} (IP:port or off)"
                );
                return ExitCode::from(2);
            }
        },
    };
    let overrides = Overrides {
        listen: args.listen,
        metrics,
        no_protected_mode: args.no_protected_mode,
        // --log-level (and RUST_LOG, which wins over both) keep the level a
        // reload would otherwise take from the file.
        log_level: args
            .log_level
            .clone()
            .or_else(|| std::env::var_os("RUST_LOG").map(|_| config.log_level.clone())),
    };
    overrides.apply(&mut config);
    if args.check_config {
        print!("{}", config.render_masked());
        return ExitCode::SUCCESS;
    }
    init_tracing(
        args.log_level.as_deref().unwrap_or(&config.log_level),
        args.log_json || config.log_format == "json",
    );
    return_freed_memory();

    let mut rt = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if args.threads > 1 {
        rt.worker_threads(args.threads);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("redis-sidecar: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let proxy = match Proxy::start(config).await {
            Ok(p) => p,
            Err(e) => {
                eprintln!("redis-sidecar: {e}");
                return ExitCode::FAILURE;
            }
        };
        // SIGHUP and PROXY RELOAD read the file again, with the environment's
        // and the command line's overrides.
        let path = args.config.clone();
        proxy.set_reload_source(Box::new(move || {
            let mut config = Config::load(&path).map_err(|e| e.to_string())?;
            overrides.apply(&mut config);
            Ok(config)
        }));
        wait_for_signal(&proxy).await;
        tracing::info!("signal received, shutting down");
        proxy.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn init_tracing(level: &str, json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.to_ascii_lowercase()))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // No ANSI colours unless stderr is a terminal (escape codes in files and
    // collected logs are noise, or worse).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let current = filter.to_string();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // PROXY LOGLEVEL changes the filter through the reload handle.
    fn setter<L, S>(
        handle: tracing_subscriber::reload::Handle<L, S>,
    ) -> redis_sidecar::logging::Setter
    where
        L: From<EnvFilter> + Send + Sync + 'static,
        S: 'static,
    {
        Box::new(move |directive: &str| {
            let filter = EnvFilter::try_new(directive.to_ascii_lowercase())
                .map_err(|e| format!("invalid log filter {directive:?}: {e}"))?;
            handle.reload(filter).map_err(|e| e.to_string())
        })
    }
    if json {
        let builder = builder.json().with_filter_reloading();
        redis_sidecar::logging::install(setter(builder.reload_handle()), &current);
        builder.init();
    } else {
        let builder = builder.with_filter_reloading();
        redis_sidecar::logging::install(setter(builder.reload_handle()), &current);
        builder.init();
    }
}

/// The command line's overrides of the file, applied at start and on every reload.
struct Overrides {
    listen: Option<std::net::SocketAddr>,
    metrics: Option<Option<std::net::SocketAddr>>,
    no_protected_mode: bool,
    log_level: Option<String>,
}

impl Overrides {
    fn apply(&self, config: &mut Config) {
        if let Some(listen) = self.listen {
            config.listen = listen;
            config.plain_listener = true;
        }
        if self.no_protected_mode {
            config.protected_mode = false;
        }
        if let Some(m) = self.metrics {
            config.metrics_listen = m;
        }
        if let Some(level) = &self.log_level {
            level.clone_into(&mut config.log_level);
        }
    }
}

/// Returns on SIGTERM or Ctrl-C; SIGHUP reloads the configuration (a bad file
/// is logged and changes nothing).
async fn wait_for_signal(proxy: &Proxy) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(mut term), Ok(mut hup)) => loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading the configuration");
                        // The outcome is logged and counted by the reload itself.
                        let _ = proxy.reload().await;
                    }
                }
            },
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = proxy;
        let _ = tokio::signal::ctrl_c().await;
    }
}
