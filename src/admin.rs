//! `PROXY …`: the proxy's own admin command, answered without reaching Redis.
//!
//! `PROXY INFO [section]` answers INFO-style text (`# Section` headers and
//! `key:value` lines), like Redis's `INFO`, for the sections `server`, `clients`,
//! `databases`, `circuits` and `stats`. `PROXY HEALTH`, `PROXY STATS [db]`,
//! `PROXY RESETSTATS` and `PROXY CIRCUIT <db> OPEN|CLOSE|AUTO` report on and steer
//! the resilience layer. Passwords never appear.

use std::fmt::Write;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use crate::command::{command_name, upper, ArgList};
use crate::context::View;
use crate::protocol::reply;
use crate::protocol::request::parse_int;
use crate::resilience::{CommandStats, Override, State};
use crate::router::Database;
use crate::stats::get;

/// The git commit the binary was built from (`build.rs`; `unknown` without git).
pub const GIT_COMMIT: &str = env!("REDIS_SIDECAR_BUILD_COMMIT");

/// The sections of `PROXY INFO`, in order.
pub const SECTIONS: &[&str] = &[
    "server",
    "clients",
    "databases",
    "circuits",
    "cluster",
    "stats",
];

/// Answers a `PROXY` command (`args.arg(0)` is `PROXY`). Returns the encoded reply.
pub fn proxy<L: ArgList + ?Sized>(ctx: &View<'_>, args: &L) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 32];
    let sub = upper(args.arg(1), &mut buf).unwrap_or(b"");
    match sub {
        b"INFO" if args.count() <= 3 => {
            let wanted = String::from_utf8_lossy(args.arg(2)).to_ascii_lowercase();
            let text = if args.count() == 2 || wanted == "all" || wanted == "default" {
                info(ctx, SECTIONS)
            } else if SECTIONS.contains(&wanted.as_str()) {
                info(ctx, &[wanted.as_str()])
            } else {
                String::new()
            };
            reply::bulk(&mut out, text.as_bytes());
        }
        b"HEALTH" if args.count() == 2 => reply::bulk(&mut out, health(ctx).as_bytes()),
        b"STATS" if args.count() <= 3 => {
            let dbs: Vec<&Arc<Database>> = if args.count() == 3 {
                match find_db(ctx, args.arg(2)) {
                    Some(db) => vec![db],
                    None => return unknown_db(args.arg(2)),
                }
            } else {
                ctx.router.databases().iter().collect()
            };
            reply::bulk(&mut out, command_stats(&dbs).as_bytes());
        }
        b"RESETSTATS" if args.count() == 2 => {
            for db in ctx.router.databases() {
                db.commands.reset();
            }
            reply::simple(&mut out, "OK");
        }
        b"CIRCUIT" if args.count() == 4 => {
            let Some(db) = find_db(ctx, args.arg(2)) else {
                return unknown_db(args.arg(2));
            };
            match String::from_utf8_lossy(args.arg(3)).parse::<Override>() {
                Ok(o) => {
                    tracing::warn!(db = %db.label(), mode = %o, "circuit override set by operator");
                    db.breaker.set_override(o);
                    reply::simple(&mut out, "OK");
                }
                Err(_) => reply::error(&mut out, "ERR PROXY CIRCUIT <db> OPEN|CLOSE|AUTO"),
            }
        }
        b"LOGLEVEL" if args.count() == 2 => {
            reply::bulk(&mut out, crate::logging::current().as_bytes())
        }
        b"LOGLEVEL" if args.count() == 3 => {
            match crate::logging::set(&String::from_utf8_lossy(args.arg(2))) {
                Ok(()) => reply::simple(&mut out, "OK"),
                Err(e) => reply::error(&mut out, &format!("ERR {e}")),
            }
        }
        b"CLIENTS" if args.count() == 2 => {
            let all = ctx.clients.select(&crate::clients::Filter::default());
            let text: String = all.iter().map(|c| c.proxy_line(&ctx.clients)).collect();
            reply::bulk(&mut out, text.as_bytes());
        }
        b"SLOWLOG" if args.count() >= 3 => {
            let mut buf = [0u8; 32];
            match (upper(args.arg(2), &mut buf).unwrap_or(b""), args.count()) {
                (b"GET", 3) => out = crate::slowlog::render(&ctx.slowlog.get(10)),
                (b"GET", 4) => match String::from_utf8_lossy(args.arg(3)).parse::<i64>() {
                    // Redis: -1 means every entry.
                    Ok(-1) => out = crate::slowlog::render(&ctx.slowlog.get(usize::MAX)),
                    Ok(n) if n >= 0 => out = crate::slowlog::render(&ctx.slowlog.get(n as usize)),
                    _ => reply::error(&mut out, "ERR count should be greater than or equal to -1"),
                },
                (b"LEN", 3) => reply::integer(&mut out, ctx.slowlog.len() as i64),
                (b"RESET", 3) => {
                    ctx.slowlog.reset();
                    reply::simple(&mut out, "OK");
                }
                _ => reply::error(&mut out, "ERR PROXY SLOWLOG GET [count] | LEN | RESET"),
            }
        }
        b"HELP" => {
            let lines = [
                "PROXY <subcommand>. Subcommands are:",
                "INFO [section]",
                "    INFO-style report of the proxy. Sections: server, clients, databases, circuits, stats.",
                "HEALTH",
                "    overall_healthy and, per database, probe result, breaker state, last error.",
                "STATS [db]",
                "    Per-command statistics (counts, error rates, moving average, percentiles).",
                "AUTH <admin_password>",
                "    Make this session an admin (needed by RESETSTATS and CIRCUIT).",
                "RESETSTATS",
                "    Reset the per-command statistics (admin).",
                "CHECK [JSON] [READONLY]",
                "    Migration readiness of every database, as `redis-sidecar check` reports it (READONLY: no write test).",
                "LOGLEVEL [filter]",
                "    Show the log filter, or set it: a level (error, warn, info, debug, trace) or a RUST_LOG directive (admin to set).",
                "CLIENTS",
                "    One line per client: id, addr, name, db, age, idle, mode (shared, transaction, blocking, subscribed, private), pending replies, bytes buffered, memory, last command.",
                "SLOWLOG GET [count] | LEN | RESET",
                "    Batches slower than slowlog_threshold_ms, newest first: id, time, microseconds, commands, client address, client name, database (RESET: admin).",
                "RELOAD",
                "    Re-read the configuration file and apply it without dropping clients; a bad file changes nothing (admin when admin_password is set).",
                "CIRCUIT <db> OPEN|CLOSE|AUTO",
                "    Force a database's circuit breaker open or closed, or give it back to automatic (admin).",
                "HELP",
                "    Print this help.",
            ];
            reply::array_header(&mut out, lines.len());
            for l in lines {
                reply::simple(&mut out, l);
            }
        }
        _ => reply::error(
            &mut out,
            &format!(
                "ERR unknown subcommand or wrong number of arguments for 'PROXY {}'. Try PROXY HELP.",
                String::from_utf8_lossy(args.arg(1))
            ),
        ),
    }
    out
}

fn unknown_db(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    reply::error(
        &mut out,
        &format!("ERR no such database '{}'", String::from_utf8_lossy(name)),
    );
    out
}

/// A database by client-facing index or by name (or alias).
fn find_db<'a>(ctx: &View<'a>, key: &[u8]) -> Option<&'a Arc<Database>> {
    if let Some(i) = parse_int(key) {
        return ctx.router.get(i);
    }
    ctx.router
        .databases()
        .iter()
        .find(|d| d.config.names.iter().any(|n| n.as_bytes() == key))
}

/// Text that fits in one `key=value` field.
fn field(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == ',' || c == '\r' || c == '\n' {
                ' '
            } else {
                c
            }
        })
        .collect()
}

/// `PROXY HEALTH`: overall health and one line per database; on a Redis Cluster
/// database also one line per node (`db0_node_HOST:PORT`), whose probes and
/// breakers make the database's health.
pub fn health(ctx: &View<'_>) -> String {
    let dbs = ctx.router.databases();
    let healthy = |d: &Database| d.health.healthy.load(Relaxed) && d.breaker.state() != State::Open;
    let overall = dbs.iter().all(|d| healthy(d));
    let mut s = format!("# Health\r\noverall_healthy:{}\r\n", overall as u8);
    for db in dbs {
        let b = db.breaker.snapshot();
        let nodes = db.cluster().map(|c| (c.topology(), c.nodes()));
        // A cluster database is probed through its nodes: their figures, summed
        // (probes) or the worst of them (latency, failures, an error).
        let h: Vec<&crate::upstream::health::HealthState> = match &nodes {
            Some((_, nodes)) => nodes.iter().map(|n| &*n.health).collect(),
            None => vec![&*db.health],
        };
        let max = |f: fn(&crate::upstream::health::HealthState) -> u64| {
            h.iter().map(|x| f(x)).max().unwrap_or(0)
        };
        let _ = write!(
            s,
            "db{}:name={},healthy={},circuit={},override={},last_probe_latency_ms={:.3},probes={},probe_failures={},consecutive_failures={},breaker_consecutive_failures={},last_error={}\r\n",
            db.config.index,
            db.config.name(),
            healthy(db) as u8,
            b.state,
            b.override_,
            max(|x| x.last_latency_us.load(Relaxed)) as f64 / 1000.0,
            h.iter().map(|x| x.probes.load(Relaxed)).sum::<u64>(),
            h.iter().map(|x| x.failures.load(Relaxed)).sum::<u64>(),
            max(|x| x.consecutive_failures.load(Relaxed)),
            b.consecutive_failures,
            field(&h.iter().find_map(|x| x.last_error()).unwrap_or_default()),
        );
        let (topo, nodes) = nodes.unwrap_or_default();
        for n in &nodes {
            let nb = n.breaker.snapshot();
            let _ = write!(
                s,
                "db{}_node_{}:role={},healthy={},circuit={},last_probe_latency_ms={:.3},probes={},probe_failures={},consecutive_failures={},breaker_consecutive_failures={},last_error={}\r\n",
                db.config.index,
                n.addr,
                node_role(topo.as_deref(), n),
                n.health.healthy.load(Relaxed) as u8,
                nb.state,
                n.health.last_latency_us.load(Relaxed) as f64 / 1000.0,
                n.health.probes.load(Relaxed),
                n.health.failures.load(Relaxed),
                n.health.consecutive_failures.load(Relaxed),
                nb.consecutive_failures,
                field(&n.health.last_error().unwrap_or_default()),
            );
        }
    }
    s
}

/// A cluster node's role in the current map.
fn node_role(
    topo: Option<&crate::cluster::client::Topology>,
    node: &crate::cluster::client::Node,
) -> &'static str {
    topo.map_or("unknown", |t| {
        if t.primaries.iter().any(|p| p.addr == node.addr) {
            "primary"
        } else {
            "replica"
        }
    })
}

fn stats_line(name: &str, c: &CommandStats) -> String {
    let total = c.total.load(Relaxed);
    let failed = c.failed.load(Relaxed);
    let rejected = c.rejected.load(Relaxed);
    let p = c.percentiles();
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    format!(
        "{name}:total={total},succeeded={},failed={failed},rejected={rejected},retried={},timed_out={},error_rate={:.4},avg_ms={:.3},p50_ms={:.3},p90_ms={:.3},p99_ms={:.3},max_ms={:.3}\r\n",
        c.succeeded.load(Relaxed),
        c.retried.load(Relaxed),
        c.timed_out.load(Relaxed),
        if total == 0 { 0.0 } else { (failed + rejected) as f64 / total as f64 },
        c.ewma_ms(),
        ms(p.p50),
        ms(p.p90),
        ms(p.p99),
        ms(p.max),
    )
}

/// `PROXY STATS`: per database, the aggregate and every command used so far.
/// Counts cover commands forwarded upstream; errors Redis answers count as
/// succeeded exchanges (the upstream did answer).
pub fn command_stats(dbs: &[&Arc<Database>]) -> String {
    let mut s = String::new();
    for (n, db) in dbs.iter().enumerate() {
        if n > 0 {
            s.push_str("\r\n");
        }
        let _ = write!(
            s,
            "# Stats db{} ({})\r\n",
            db.config.index,
            db.config.name()
        );
        s.push_str(&stats_line("all", db.commands.all()));
        for (idx, c) in db.commands.iter_used() {
            s.push_str(&stats_line(&format!("cmd_{}", command_name(idx)), c));
        }
        // A Redis Cluster database: what each node was sent.
        if let Some(cl) = db.cluster() {
            let topo = cl.topology();
            for n in cl.nodes() {
                let _ = writeln!(
                    s,
                    "node_{}:role={},requests={},redirects={}\r",
                    n.addr,
                    node_role(topo.as_deref(), &n),
                    get(&n.requests),
                    get(&n.redirects),
                );
            }
        }
    }
    s
}

/// A resource limit as INFO shows it (`unlimited` for none).
fn limit(l: Option<u64>) -> String {
    l.map_or_else(|| "unlimited".to_string(), |n| n.to_string())
}

/// Renders the INFO text for the given sections (CRLF line endings, like Redis).
/// `busy_poll:on|off`, why it is off, its window and what it spent.
fn busy_poll_lines(s: &mut String, decision: crate::busy_poll::Decision) {
    use crate::busy_poll::Decision;
    let (state, window, why) = match decision {
        Decision::On(w) => ("on", w.as_micros(), ""),
        Decision::Off(why) => ("off", 0, why),
    };
    let f = crate::busy_poll::figures();
    let _ = write!(
        s,
        "busy_poll:{state}\r\nbusy_poll_us:{window}\r\nbusy_poll_off_reason:{why}\r\nbusy_poll_spins:{}\r\nbusy_poll_spin_ms:{}\r\nbusy_poll_back_offs:{}\r\n",
        f.spins,
        f.spin_time.as_millis(),
        f.back_offs,
    );
}

pub fn info(ctx: &View<'_>, sections: &[&str]) -> String {
    let mut s = String::new();
    let st = &ctx.stats;
    for (n, section) in sections.iter().enumerate() {
        if n > 0 {
            s.push_str("\r\n");
        }
        match *section {
            "server" => {
                let up = st.started.elapsed().as_secs();
                let _ = write!(
                    s,
                    "# Server\r\nproxy_version:{}\r\ngit_commit:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\nlisten_address:{}\r\nconfig_file:{}\r\nconfig_loaded_at:{}\r\nconfig_generation:{}\r\nconfig_reloads:{}\r\nconfig_reload_failures:{}\r\nconfig_hash:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    GIT_COMMIT,
                    std::process::id(),
                    up,
                    up / 86400,
                    ctx.local_addr(),
                    ctx.config
                        .source
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    ctx.live.loaded_at,
                    ctx.live.generation,
                    get(&st.config_reloads),
                    get(&st.config_reload_failures),
                    ctx.live.hash,
                );
                busy_poll_lines(&mut s, ctx.busy_poll);
            }
            "clients" => {
                let _ = write!(
                    s,
                    "# Clients\r\nconnected_clients:{}\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\naccept_errors:{}\r\nmax_clients:{}\r\nmax_clients_configured:{}\r\nfd_limit:{}\r\nfd_limit_hard:{}\r\nfd_reserved:{}\r\nclients_memory:{}\r\nmax_client_memory:{}\r\nclient_reply_buffer:{}\r\nclient_read_ahead:{}\r\n",
                    get(&st.connected_clients),
                    get(&st.total_connections),
                    get(&st.rejected_connections),
                    get(&st.accept_errors),
                    ctx.fds.max_clients,
                    ctx.fds.configured_max_clients,
                    limit(ctx.fds.soft),
                    limit(ctx.fds.hard),
                    ctx.fds.reserved,
                    ctx.clients.memory(),
                    ctx.config.limits.max_client_memory,
                    ctx.config.limits.client_reply_buffer,
                    ctx.config.limits.client_read_ahead,
                );
            }
            "databases" => {
                s.push_str("# Databases\r\n");
                for db in ctx.router.databases() {
                    let c = &db.config;
                    let u = &c.upstream;
                    let pool = db.pool(false).state();
                    let _ = write!(
                        s,
                        "db{}:name={},aliases={},upstream={},upstream_db={},shared_connections={},shared_open={},pool_size={},pool_open={},pool_idle={},in_flight={},commands={},errors={},upstream_failures={},connects={},connect_failures={}",
                        c.index,
                        c.name(),
                        c.names[1..].join("|"),
                        u.address(),
                        u.db,
                        db.slot_count(),
                        get(&db.stats.mux_connected),
                        u.pool_size,
                        pool.connections,
                        pool.idle_connections,
                        get(&db.stats.in_flight),
                        get(&db.stats.commands),
                        get(&db.stats.errors),
                        get(&db.stats.upstream_failures),
                        get(&db.stats.connects),
                        get(&db.stats.connect_failures),
                    );
                    if let Some(sentinel) = &u.sentinel {
                        // `upstream` above is the current primary.
                        let _ = write!(
                            s,
                            ",sentinel_master={},primary={},failovers={}",
                            sentinel.master,
                            u.endpoint.current().map_or_else(
                                || "unknown".to_string(),
                                |(h, p, _)| format!("{h}:{p}")
                            ),
                            u.endpoint.failovers()
                        );
                    }
                    if let Some(cl) = db.cluster() {
                        let (shards, covered, generation) = cl.topology().map_or((0, 0, 0), |t| {
                            (t.map.shards().len(), t.map.covered(), t.generation)
                        });
                        let _ = write!(
                            s,
                            ",cluster_shards={shards},cluster_slots_covered={covered},cluster_nodes={},map_generation={generation},map_refreshes={},map_refresh_failures={},moved={},asked={},again={},pubsub_node={}",
                            cl.nodes().len(),
                            get(&cl.refreshes),
                            get(&cl.refresh_failures),
                            get(&cl.moved),
                            get(&cl.asked),
                            get(&cl.again),
                            cl.home().map_or_else(|| "none".to_string(), |n| n.addr.clone()),
                        );
                    }
                    s.push_str("\r\n");
                }
            }
            "cluster" => {
                // One line per node of each Redis Cluster database.
                s.push_str("# Cluster\r\n");
                for db in ctx.router.databases() {
                    let Some(cl) = db.cluster() else { continue };
                    let topo = cl.topology();
                    for node in cl.nodes() {
                        let role = node_role(topo.as_deref(), &node);
                        let b = node.breaker.snapshot();
                        let _ = write!(
                            s,
                            "node_db{}_{}:role={role},requests={},redirects={},circuit={},healthy={},probe_latency_us={}\r\n",
                            db.config.index,
                            node.addr,
                            get(&node.requests),
                            get(&node.redirects),
                            b.state,
                            node.health.healthy.load(Relaxed) as u8,
                            node.health.last_latency_us.load(Relaxed),
                        );
                    }
                }
            }
            "circuits" => {
                s.push_str("# Circuits\r\n");
                for db in ctx.router.databases() {
                    let b = db.breaker.snapshot();
                    let _ = write!(
                        s,
                        "circuit_db{}:name={},state={},override={},time_in_state_s={:.1},trips={},rejected={},consecutive_failures={},healthy={}\r\n",
                        db.config.index,
                        db.config.name(),
                        b.state,
                        b.override_,
                        b.time_in_state.as_secs_f64(),
                        b.trips,
                        b.rejected,
                        b.consecutive_failures,
                        db.health.healthy.load(Relaxed) as u8,
                    );
                }
            }
            "stats" => {
                let dbs = ctx.router.databases();
                let forwarded: u64 = dbs.iter().map(|d| get(&d.stats.commands)).sum();
                let errors: u64 = dbs.iter().map(|d| get(&d.stats.errors)).sum();
                let local = get(&st.local_commands);
                let _ = write!(
                    s,
                    "# Stats\r\ntotal_commands_processed:{}\r\ncommands_forwarded:{}\r\ncommands_local:{}\r\nerror_replies:{}\r\nprotocol_errors:{}\r\nauth_failures:{}\r\ninstantaneous_ops_per_sec:{}\r\nclient_output_buffer_limit_disconnections:{}\r\nevicted_clients:{}\r\n",
                    forwarded + local,
                    forwarded,
                    local,
                    errors,
                    get(&st.protocol_errors),
                    get(&st.auth_failures),
                    get(&st.ops_per_sec),
                    get(&st.output_buffer_disconnections),
                    get(&st.evicted_clients),
                );
            }
            _ => {}
        }
    }
    s
}
