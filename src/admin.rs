//! `PROXY …`: the proxy's own admin command, answered without reaching Redis.
//!
//! `PROXY INFO [section]` answers INFO-style text (`# Section` headers and
//! `key:value` lines), like Redis's `INFO`, for the sections `server`, `clients`,
//! `databases` and `stats`. Passwords never appear.

use std::fmt::Write;

use crate::command::{upper, ArgList};
use crate::context::Context;
use crate::protocol::reply;
use crate::stats::get;

/// The sections of `PROXY INFO`, in order.
pub const SECTIONS: &[&str] = &["server", "clients", "databases", "stats"];

/// Answers a `PROXY` command (`args.arg(0)` is `PROXY`). Returns the encoded reply.
pub fn proxy<L: ArgList + ?Sized>(ctx: &Context, args: &L) -> Vec<u8> {
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
        b"HELP" => {
            let lines = [
                "PROXY <subcommand>. Subcommands are:",
                "INFO [section]",
                "    INFO-style report of the proxy. Sections: server, clients, databases, stats.",
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

/// Renders the INFO text for the given sections (CRLF line endings, like Redis).
pub fn info(ctx: &Context, sections: &[&str]) -> String {
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
                    "# Server\r\nproxy_version:{}\r\nprocess_id:{}\r\nuptime_in_seconds:{}\r\nuptime_in_days:{}\r\nlisten_address:{}\r\nconfig_file:{}\r\n",
                    env!("CARGO_PKG_VERSION"),
                    std::process::id(),
                    up,
                    up / 86400,
                    ctx.local_addr,
                    ctx.config
                        .source
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                );
            }
            "clients" => {
                let _ = write!(
                    s,
                    "# Clients\r\nconnected_clients:{}\r\ntotal_connections_received:{}\r\nrejected_connections:{}\r\nmax_clients:{}\r\n",
                    get(&st.connected_clients),
                    get(&st.total_connections),
                    get(&st.rejected_connections),
                    ctx.config.max_clients,
                );
            }
            "databases" => {
                s.push_str("# Databases\r\n");
                for db in ctx.router.databases() {
                    let c = &db.config;
                    let u = &c.upstream;
                    let pool = db.pool.state();
                    let _ = write!(
                        s,
                        "db{}:name={},aliases={},upstream={},upstream_db={},shared_connections={},shared_open={},pool_size={},pool_open={},pool_idle={},in_flight={},commands={},errors={},upstream_failures={},connects={},connect_failures={}\r\n",
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
                }
            }
            "stats" => {
                let dbs = ctx.router.databases();
                let forwarded: u64 = dbs.iter().map(|d| get(&d.stats.commands)).sum();
                let errors: u64 = dbs.iter().map(|d| get(&d.stats.errors)).sum();
                let local = get(&st.local_commands);
                let _ = write!(
                    s,
                    "# Stats\r\ntotal_commands_processed:{}\r\ncommands_forwarded:{}\r\ncommands_local:{}\r\nerror_replies:{}\r\nprotocol_errors:{}\r\ninstantaneous_ops_per_sec:{}\r\n",
                    forwarded + local,
                    forwarded,
                    local,
                    errors,
                    get(&st.protocol_errors),
                    get(&st.ops_per_sec),
                );
            }
            _ => {}
        }
    }
    s
}
