//! Migration readiness: `redis-sidecar check` and `PROXY CHECK`.
//!
//! The seed manager's `test_async_migration(...)['migration_ready']`, as a command
//! for CI and Kubernetes init containers. Every configured database is checked on a
//! connection of its own, opened as the proxy opens its upstream connections (so
//! AUTH, `upstream_db` and the timeouts are checked as they will be used):
//!
//! 1. connect, authenticate and `SELECT upstream_db`;
//! 2. `PING` three times (the median latency is reported);
//! 3. `INFO server` / `INFO replication`: version and role;
//! 4. `CONFIG GET databases`: `upstream_db` must be below it (when the server lets
//!    the proxy's user read it);
//! 5. `COMMAND INFO` of the commands the proxy itself sends: none may be renamed
//!    away or missing;
//! 6. unless `read_only`: a `SET` of a unique key with a 60 s expiry and a `DEL`.
//!
//! A database is ready when every step passed. Each problem is one line that says
//! what to fix.

use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{Config, DatabaseConfig, UpstreamConfig};
use crate::protocol::request::encode_command;
use crate::upstream::dedicated::ExclusiveConn;

/// Commands the proxy sends on its own (connection setup, probes, transactions,
/// out-of-band kills); a server that renamed one away breaks the proxy.
const PROXY_COMMANDS: [&str; 10] = [
    "auth", "hello", "select", "ping", "info", "client", "multi", "exec", "discard", "script",
];

/// How the check is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckOptions {
    /// Skip the write test (a replica, or a server the proxy only reads).
    pub read_only: bool,
}

/// What was found about one database.
#[derive(Debug, Clone, Default)]
pub struct DatabaseReport {
    /// Its name.
    pub name: String,
    /// The client-side index.
    pub db: u32,
    /// `host:port` of its upstream.
    pub upstream: String,
    /// The db index selected upstream.
    pub upstream_db: u32,
    /// Connected, authenticated and selected.
    pub reachable: bool,
    /// Median PING round trip.
    pub ping: Option<Duration>,
    /// `redis_version`.
    pub version: Option<String>,
    /// `role` (master, slave).
    pub role: Option<String>,
    /// The server's `databases`, when readable.
    pub databases: Option<u32>,
    /// The write test: `Some(true)` passed, `None` skipped or not reached.
    pub writable: Option<bool>,
    /// One line per problem, each saying what to fix.
    pub problems: Vec<String>,
}

impl DatabaseReport {
    /// Every check passed.
    pub fn ready(&self) -> bool {
        self.reachable && self.problems.is_empty()
    }
}

/// The whole report.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// One entry per configured database, in index order.
    pub databases: Vec<DatabaseReport>,
    /// The write test was skipped.
    pub read_only: bool,
}

impl Report {
    /// Every database is ready.
    pub fn ready(&self) -> bool {
        self.databases.iter().all(DatabaseReport::ready)
    }

    /// A table, then one line per problem.
    pub fn render_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<12} {:>3}  {:<22} {:>4}  {:<6} {:>8}  {:<8} {:<7} {:<8}",
            "DATABASE", "DB", "UPSTREAM", "UDB", "STATUS", "PING_MS", "VERSION", "ROLE", "WRITABLE"
        );
        for d in &self.databases {
            let _ = writeln!(
                s,
                "{:<12} {:>3}  {:<22} {:>4}  {:<6} {:>8}  {:<8} {:<7} {:<8}",
                d.name,
                d.db,
                d.upstream,
                d.upstream_db,
                if d.ready() { "ready" } else { "FAIL" },
                d.ping
                    .map_or("-".to_string(), |p| format!("{:.3}", p.as_secs_f64() * 1e3)),
                d.version.as_deref().unwrap_or("-"),
                d.role.as_deref().unwrap_or("-"),
                match d.writable {
                    Some(true) => "yes",
                    Some(false) => "NO",
                    None if self.read_only => "skipped",
                    None => "-",
                },
            );
        }
        let problems: Vec<String> = self
            .databases
            .iter()
            .flat_map(|d| {
                d.problems
                    .iter()
                    .map(move |p| format!("{} (db {}): {p}", d.name, d.db))
            })
            .collect();
        if problems.is_empty() {
            let _ = writeln!(
                s,
                "\nmigration_ready: yes ({} databases)",
                self.databases.len()
            );
        } else {
            let _ = writeln!(s, "\nmigration_ready: no, {} problem(s):", problems.len());
            for p in problems {
                let _ = writeln!(s, "  {p}");
            }
        }
        s
    }

    /// The same as JSON: `{"migration_ready": bool, "read_only": bool,
    /// "databases": [{"name", "db", "upstream", "upstream_db", "ready", "reachable",
    /// "ping_ms", "version", "role", "databases", "writable", "problems": [..]}]}`;
    /// unknown values are `null`.
    pub fn render_json(&self) -> String {
        let mut s = format!(
            "{{\"migration_ready\":{},\"read_only\":{},\"databases\":[",
            self.ready(),
            self.read_only
        );
        for (i, d) in self.databases.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let problems: Vec<String> = d.problems.iter().map(|p| json_str(p)).collect();
            let _ = write!(
                s,
                "{{\"name\":{},\"db\":{},\"upstream\":{},\"upstream_db\":{},\"ready\":{},\"reachable\":{},\"ping_ms\":{},\"version\":{},\"role\":{},\"databases\":{},\"writable\":{},\"problems\":[{}]}}",
                json_str(&d.name),
                d.db,
                json_str(&d.upstream),
                d.upstream_db,
                d.ready(),
                d.reachable,
                d.ping
                    .map_or("null".to_string(), |p| format!("{:.3}", p.as_secs_f64() * 1e3)),
                d.version.as_deref().map_or("null".to_string(), json_str),
                d.role.as_deref().map_or("null".to_string(), json_str),
                d.databases.map_or("null".to_string(), |n| n.to_string()),
                d.writable.map_or("null".to_string(), |w| w.to_string()),
                problems.join(","),
            );
        }
        s.push_str("]}\n");
        s
    }
}

/// A JSON string literal (the status page's escaping).
fn json_str(v: &str) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    crate::status::json_str(&mut s, v);
    s
}

/// Checks every configured database, all at once.
pub async fn run(config: &Config, opts: CheckOptions) -> Report {
    let checks = config
        .databases
        .iter()
        .map(|db| tokio::spawn(check_database(db.clone(), opts)));
    let mut databases = Vec::new();
    for (db, task) in config.databases.iter().zip(checks.collect::<Vec<_>>()) {
        databases.push(task.await.unwrap_or_else(|e| DatabaseReport {
            name: db.name().to_string(),
            db: db.index,
            problems: vec![format!("the check itself failed: {e}")],
            ..DatabaseReport::default()
        }));
    }
    databases.sort_by_key(|d| d.db);
    Report {
        databases,
        read_only: opts.read_only,
    }
}

/// One request and its reply, as text for the simple replies the check reads.
async fn ask(conn: &mut ExclusiveConn, args: &[&[u8]]) -> Result<Vec<u8>, String> {
    let mut req = Vec::new();
    encode_command(args, &mut req);
    conn.round_trip(&req, 1)
        .await
        .map(|b| b.to_vec())
        .map_err(|e| e.to_string())
}

/// The text of an error reply (`-ERR …`), if it is one.
fn error_of(reply: &[u8]) -> Option<String> {
    reply.strip_prefix(b"-").map(|e| {
        String::from_utf8_lossy(e)
            .trim_end_matches("\r\n")
            .to_string()
    })
}

/// `field:value` out of an INFO reply.
fn info_field(reply: &[u8], field: &str) -> Option<String> {
    let text = String::from_utf8_lossy(reply);
    text.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|v| v.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// A key no one else uses: the proxy's name, the time and a random part.
fn probe_key() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("redis-sidecar:check:{nanos:x}:{:016x}", fastrand::u64(..))
}

async fn check_database(db: DatabaseConfig, opts: CheckOptions) -> DatabaseReport {
    let key = probe_key();
    let mut r = DatabaseReport {
        name: db.name().to_string(),
        db: db.index,
        upstream: db.upstream.address(),
        upstream_db: db.upstream.db,
        ..DatabaseReport::default()
    };
    // A Redis Cluster database: the slot map, then the primary of the test key.
    let cfg = match db.upstream.cluster {
        Some(_) => match cluster_node(&db.upstream, &key, &mut r).await {
            Some(c) => c,
            None => return r,
        },
        None => db.upstream.clone(),
    };
    let cfg = &cfg;
    let limit = cfg.connect_timeout + cfg.command_timeout * 8;
    if tokio::time::timeout(limit, steps(cfg, opts, &key, &mut r))
        .await
        .is_err()
    {
        r.problems.push(format!(
            "the check did not finish within {limit:?}: the server is too slow or not answering; check its load and command_timeout"
        ));
    }
    r
}

/// A cluster database: learns the slot map from the seeds (a problem if no seed
/// answers, or if slots are unserved) and gives the settings of a connection to
/// the primary serving `key`'s slot, where the other steps run.
async fn cluster_node(
    base: &UpstreamConfig,
    key: &str,
    r: &mut DatabaseReport,
) -> Option<UpstreamConfig> {
    let seeds = base
        .cluster
        .as_ref()
        .map(|c| c.nodes.clone())
        .unwrap_or_default();
    let mut last = String::from("no seed nodes");
    for (h, p) in seeds {
        let addr = format!("{h}:{p}");
        let limit = base.connect_timeout + base.command_timeout;
        let map = match tokio::time::timeout(limit, crate::cluster::map::fetch(&addr, base)).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                last = format!("{addr}: {e}");
                continue;
            }
            Err(_) => {
                last = format!("{addr}: no slot map within {limit:?}");
                continue;
            }
        };
        let covered = map.covered();
        if covered < crate::cluster::SLOTS {
            r.problems.push(format!(
                "the cluster serves only {covered} of {} slots: keys of the others get -CLUSTERDOWN; fix the cluster (redis-cli --cluster fix)",
                crate::cluster::SLOTS
            ));
        }
        let primary = map.shard_for_key(key.as_bytes())?.primary.addr.clone();
        let (host, port) = crate::cluster::map::split_addr(&primary)?;
        let mut cfg = crate::cluster::client::seed_config(base);
        cfg.host = host;
        cfg.port = port;
        r.upstream = primary;
        return Some(cfg);
    }
    r.problems.push(format!(
        "no seed node gave the cluster's slot map ({last}): {}",
        connect_advice(&last)
    ));
    None
}

async fn steps(cfg: &UpstreamConfig, opts: CheckOptions, key: &str, r: &mut DatabaseReport) {
    let mut conn = match ExclusiveConn::open(cfg, false, false).await {
        Ok(c) => c,
        Err(e) => {
            r.problems
                .push(format!("{e}: {}", connect_advice(&e.to_string())));
            return;
        }
    };
    r.reachable = true;
    // A Sentinel-backed database: the primary found.
    r.upstream = cfg.address();

    // Latency: the median of three PINGs.
    let mut pings = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        match ask(&mut conn, &[b"PING"]).await {
            // (As the health probes take it: `-NOPERM` or `-BUSY` is an answer.)
            Ok(reply) if crate::upstream::answers_ping(&reply) => pings.push(t.elapsed()),
            Ok(reply) => {
                r.problems.push(format!(
                    "PING answered {}: the proxy's health probes will fail",
                    String::from_utf8_lossy(&reply).trim_end()
                ));
                break;
            }
            Err(e) => {
                r.problems.push(format!("PING failed: {e}"));
                return;
            }
        }
    }
    pings.sort();
    r.ping = pings.get(pings.len() / 2).copied();

    match ask(&mut conn, &[b"INFO", b"server"]).await {
        Ok(reply) if error_of(&reply).is_none() => {
            r.version = info_field(&reply, "redis_version");
        }
        Ok(reply) => r.problems.push(format!(
            "INFO server refused ({}): the proxy's user needs INFO for PROXY INFO and probes",
            error_of(&reply).unwrap_or_default()
        )),
        Err(e) => {
            r.problems.push(format!("INFO failed: {e}"));
            return;
        }
    }
    if let Ok(reply) = ask(&mut conn, &[b"INFO", b"replication"]).await {
        r.role = info_field(&reply, "role");
        if r.role.as_deref() == Some("slave") && !opts.read_only {
            r.problems.push(
                "the server is a replica (role:slave): writes will fail; point the database at the primary, or run the check with --read-only".into(),
            );
        }
    }

    // upstream_db below the server's `databases` (SELECT at connect already
    // proved it when it succeeded; this names the limit).
    if let Ok(reply) = ask(&mut conn, &[b"CONFIG", b"GET", b"databases"]).await {
        if error_of(&reply).is_none() {
            let text = String::from_utf8_lossy(&reply);
            r.databases = text
                .split("\r\n")
                .filter(|l| !l.is_empty() && !l.starts_with(['*', '$', '%']))
                .nth(1)
                .and_then(|v| v.parse().ok());
            if let Some(n) = r.databases.filter(|&n| cfg.db >= n) {
                r.problems.push(format!(
                    "upstream_db {} is not below the server's databases ({n}): raise `databases` in redis.conf or use a lower upstream_db",
                    cfg.db
                ));
            }
        }
    }

    // The commands the proxy sends itself exist under their own names.
    let mut args: Vec<&[u8]> = vec![b"COMMAND", b"INFO"];
    args.extend(PROXY_COMMANDS.iter().map(|c| c.as_bytes()));
    match ask(&mut conn, &args).await {
        Ok(reply) if error_of(&reply).is_none() => {
            for name in missing_commands(&reply) {
                r.problems.push(format!(
                    "the server does not know {} (renamed or disabled with rename-command?): the proxy needs it; undo the rename",
                    name.to_ascii_uppercase()
                ));
            }
        }
        Ok(reply) => r.problems.push(format!(
            "COMMAND INFO refused ({}): cannot verify the commands the proxy uses",
            error_of(&reply).unwrap_or_default()
        )),
        Err(e) => {
            r.problems.push(format!("COMMAND INFO failed: {e}"));
            return;
        }
    }

    if !opts.read_only {
        let set = ask(
            &mut conn,
            &[b"SET", key.as_bytes(), b"1", b"PX", b"60000", b"NX"],
        )
        .await;
        match set {
            Ok(reply) if reply.starts_with(b"+OK") => {
                let del = ask(&mut conn, &[b"DEL", key.as_bytes()]).await;
                match del {
                    Ok(reply) if reply.starts_with(b":1") => r.writable = Some(true),
                    Ok(reply) => {
                        r.writable = Some(false);
                        r.problems.push(format!(
                            "DEL of the test key {key} answered {}: allow DEL for the proxy's user",
                            String::from_utf8_lossy(&reply).trim_end()
                        ));
                    }
                    Err(e) => r.problems.push(format!("DEL failed: {e}")),
                }
            }
            Ok(reply) => {
                r.writable = Some(false);
                r.problems.push(format!(
                    "the write test (SET with a 60 s expiry) was refused: {}; {}",
                    String::from_utf8_lossy(&reply).trim_end(),
                    write_advice(&reply)
                ));
            }
            Err(e) => r.problems.push(format!("SET failed: {e}")),
        }
    }
}

/// The names among [`PROXY_COMMANDS`] that `COMMAND INFO` answered with a nil.
fn missing_commands(reply: &[u8]) -> Vec<&'static str> {
    // The reply is an array with one entry per name, in order: an array for a
    // known command, a nil (`$-1` in RESP2, `_` in RESP3) for an unknown one. Walk the
    // top-level entries with the framer.
    let Some(body) = reply
        .iter()
        .position(|&b| b == b'\n')
        .map(|i| &reply[i + 1..])
    else {
        return Vec::new();
    };
    let mut at = 0;
    let mut missing = Vec::new();
    for name in PROXY_COMMANDS {
        let Ok(Some(frame)) = crate::protocol::reply::scan(&body[at..]) else {
            break;
        };
        let entry = &body[at..at + frame.len];
        if entry.starts_with(b"$-1") || entry.starts_with(b"*-1") || entry.starts_with(b"_") {
            missing.push(name);
        }
        at += frame.len;
    }
    missing
}

fn connect_advice(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("wrongpass") || e.contains("invalid username-password") {
        "fix password/username (or AUTOBOT_REDIS_PASSWORD)"
    } else if e.contains("noauth") {
        "the server wants a password: set password (or AUTOBOT_REDIS_PASSWORD)"
    } else if e.contains("db index is out of range") {
        "upstream_db is not below the server's databases: raise `databases` in redis.conf or use a lower upstream_db"
    } else if e.contains("sentinel") {
        "check sentinel.nodes (host:port of running sentinels), sentinel.master and the sentinels' password"
    } else if e.contains("refused") || e.contains("timed out") || e.contains("resolve") {
        "check host/port (or AUTOBOT_REDIS_HOST / AUTOBOT_REDIS_PORT) and that Redis runs there"
    } else {
        "check the upstream settings of this database"
    }
}

fn write_advice(reply: &[u8]) -> &'static str {
    if reply.starts_with(b"-READONLY") {
        "the server is a read-only replica: point the database at the primary, or use --read-only"
    } else if reply.starts_with(b"-NOPERM") {
        "the proxy's Redis user may not write: grant it +@write (see redis-sidecar acl)"
    } else if reply.starts_with(b"-OOM") {
        "the server is out of memory (maxmemory reached)"
    } else {
        "check the server's log"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_commands_are_found_in_command_info() {
        // 10 entries: the 3rd (select) and the 10th (script) unknown.
        let mut reply = b"*10\r\n".to_vec();
        for i in 0..10 {
            if i == 2 || i == 9 {
                reply.extend_from_slice(b"$-1\r\n");
            } else {
                reply.extend_from_slice(b"*2\r\n$3\r\nget\r\n:2\r\n");
            }
        }
        assert_eq!(missing_commands(&reply), vec!["select", "script"]);
    }

    #[test]
    fn a_report_is_ready_only_without_problems() {
        let mut d = DatabaseReport {
            name: "main".into(),
            reachable: true,
            ..DatabaseReport::default()
        };
        let mut r = Report {
            databases: vec![d.clone()],
            read_only: false,
        };
        assert!(r.ready());
        assert!(r.render_json().starts_with("{\"migration_ready\":true"));
        d.problems.push("x".into());
        r.databases.push(d);
        assert!(!r.ready());
        assert!(r
            .render_text()
            .contains("migration_ready: no, 1 problem(s):\n  main (db 0): x"));
    }
}
