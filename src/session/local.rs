//! Commands the proxy answers itself because they concern the client's own
//! connection: SELECT, AUTH, HELLO, CLIENT …, RESET, QUIT, and PROXY (admin). Also
//! the rewriting of cross-database commands (MOVE, COPY … DB, SWAPDB).

use std::sync::Arc;

use super::{encode, State};
use crate::admin;
use crate::clients::{Client, Filter};
use crate::command::{upper, ArgList, Route};
use crate::context::View;
use crate::protocol::reply;
use crate::protocol::request::parse_int;
use crate::router::Database;

/// What the session does after a local command.
pub(super) enum Outcome {
    /// Write this reply.
    Reply(Vec<u8>),
    /// Forward upstream: the request as received (`None`) or re-encoded.
    Forward(Option<Vec<u8>>),
    /// Forward this request to another database's shared connection.
    ForwardTo(Arc<Database>, Vec<u8>),
    /// Send this request to a database's cluster node (`host:port`) at once, on
    /// a connection of its own.
    ForwardAt(Arc<Database>, String, Vec<u8>),
    /// Write this reply, then close the connection.
    Close(Vec<u8>),
    /// Write this reply once it is produced (its place in the order is kept).
    Later(tokio::sync::oneshot::Receiver<bytes::Bytes>),
    /// Forward upstream as received: `CLIENT PAUSE`/`UNPAUSE`, already noted on
    /// the server's databases; taken back if Redis refuses it.
    Pause(PauseNoted),
}

/// A `CLIENT PAUSE`/`UNPAUSE` noted on every database of one server
/// ([`crate::endpoint::Noted`] each), to take back on a refusal.
#[derive(Debug, Default)]
pub(super) struct PauseNoted(Vec<(crate::endpoint::Endpoint, crate::endpoint::Noted)>);

impl PauseNoted {
    /// Redis refused the request: the pause is as if it had not been sent.
    pub(super) fn take_back(self) {
        for (endpoint, noted) in self.0 {
            endpoint.take_back(noted);
        }
    }
}

fn err(text: &str) -> Outcome {
    let mut out = Vec::new();
    reply::error(&mut out, text);
    Outcome::Reply(out)
}

fn ok() -> Outcome {
    Outcome::Reply(b"+OK\r\n".to_vec())
}

/// Redis's arity error, naming the command or (`sub`) its subcommand
/// (`'client|kill'`).
pub(super) fn arity_error<L: ArgList + ?Sized>(args: &L, sub: bool) -> Vec<u8> {
    let name = String::from_utf8_lossy(args.arg(0)).to_ascii_lowercase();
    let name = match sub {
        true => format!(
            "{name}|{}",
            String::from_utf8_lossy(args.arg(1)).to_ascii_lowercase()
        ),
        false => name,
    };
    let mut out = Vec::new();
    reply::error(
        &mut out,
        &format!("ERR wrong number of arguments for '{name}' command"),
    );
    out
}

/// Redis's refusal of an EXEC with arguments ([`TxOp::Abort`]), in MULTI or not.
///
/// [`TxOp::Abort`]: crate::command::TxOp::Abort
pub(super) const EXEC_ABORT_ARITY: &[u8] =
    b"-EXECABORT Transaction discarded because of: wrong number of arguments for 'exec' command\r\n";

fn wrong_sub_args<L: ArgList + ?Sized>(args: &L) -> Outcome {
    Outcome::Reply(arity_error(args, true))
}

fn wrong_args<L: ArgList + ?Sized>(args: &L) -> Outcome {
    Outcome::Reply(arity_error(args, false))
}

/// Handles a request that is not a plain forward on an authenticated session.
pub(super) fn handle<L: ArgList + ?Sized>(
    state: &mut State,
    ctx: &View<'_>,
    route: Route,
    args: &L,
) -> Outcome {
    if !state.authenticated
        && !matches!(
            route,
            Route::Auth | Route::Hello | Route::Quit | Route::Reset
        )
    {
        return err("NOAUTH Authentication required.");
    }
    match route {
        // Inline commands (and nothing else) reach here as Forward.
        Route::Forward => Outcome::Forward(Some(encode(args))),
        Route::Select => select(state, ctx, args),
        Route::Proxy => proxy(state, ctx, args),
        Route::Auth => auth(state, ctx, args),
        Route::Hello => hello(state, ctx, args),
        Route::Client => client(state, ctx, args),
        Route::Quit => Outcome::Close(b"+OK\r\n".to_vec()),
        // Handled by the session before anything else (the client is closed).
        Route::Attack => Outcome::Close(Vec::new()),
        Route::Reset if args.count() != 1 => wrong_args(args),
        Route::Reset => {
            state.db = ctx
                .router
                .default_database()
                .cloned()
                .unwrap_or_else(|| state.db.clone());
            state.name = None;
            state.user = None;
            state.resp3 = false;
            state.authenticated = ctx.config.client_password.is_none();
            state.admin = false;
            Outcome::Reply(b"+RESET\r\n".to_vec())
        }
        Route::CrossDb => cross_db(state, ctx, args),
        Route::Stateful(family) => err(&format!(
            "ERR '{}' is not supported by redis-sidecar: {} would take over an upstream connection",
            String::from_utf8_lossy(args.arg(0)).to_ascii_uppercase(),
            family.describe()
        )),
    }
}

/// The database a client-facing index argument names, or Redis's error for it.
fn db_arg<'a>(ctx: &View<'a>, arg: &[u8]) -> Result<&'a Arc<Database>, Outcome> {
    let Some(index) = parse_int(arg) else {
        return Err(err("ERR value is not an integer or out of range"));
    };
    ctx.router
        .get(index)
        .ok_or_else(|| err("ERR DB index is out of range"))
}

fn select<L: ArgList + ?Sized>(state: &mut State, ctx: &View<'_>, args: &L) -> Outcome {
    if args.count() != 2 {
        return wrong_args(args);
    }
    match db_arg(ctx, args.arg(1)) {
        Ok(db) => {
            state.db = db.clone();
            ok()
        }
        Err(refused) => refused,
    }
}

/// The error EXEC gives for a SELECT queued inside MULTI whose index names no
/// database (`None`: it does, or the arguments are wrong, refused at once).
pub(super) fn select_error<L: ArgList + ?Sized>(ctx: &View<'_>, args: &L) -> Option<Vec<u8>> {
    if args.count() != 2 {
        return None;
    }
    match db_arg(ctx, args.arg(1)) {
        Err(Outcome::Reply(r)) => Some(r),
        _ => None,
    }
}

/// SELECT inside a transaction: the SELECT for the exclusive connection (with the
/// upstream's db index) and the database it selects, or the reply refusing it.
pub(super) fn select_in_transaction<L: ArgList + ?Sized>(
    state: &State,
    ctx: &View<'_>,
    args: &L,
) -> Result<(Arc<Database>, Vec<u8>), Outcome> {
    if args.count() != 2 {
        return Err(wrong_args(args));
    }
    let db = db_arg(ctx, args.arg(1))?;
    if !state.db.same_server(db) {
        return Err(err(&format!(
            "ERR SELECT inside a transaction across upstream servers is not supported: database {} lives on {}, database {} on {}",
            state.db.label(),
            state.db.config.upstream.address(),
            db.label(),
            db.config.upstream.address()
        )));
    }
    Ok((db.clone(), upstream_select(db)))
}

/// The `SELECT` of `db`'s upstream db, as sent to its server.
pub(super) fn upstream_select(db: &Database) -> Vec<u8> {
    let upstream = db.config.upstream.db.to_string();
    encode(&[&b"SELECT"[..], upstream.as_bytes()][..])
}

/// Credentials from AUTH or `HELLO … AUTH`: user (`None`: the one-argument AUTH),
/// password, and whether the session speaks RESP3 after the request.
pub(super) struct Credentials {
    pub user: Option<Vec<u8>>,
    pub password: Vec<u8>,
    pub resp3: bool,
}

/// The credentials an AUTH or `HELLO … AUTH` request carries; `None` when it
/// carries none or is malformed (then [`handle`] answers it).
pub(super) fn credentials<L: ArgList + ?Sized>(
    route: Route,
    args: &L,
    resp3: bool,
) -> Option<Credentials> {
    let n = args.count();
    match route {
        Route::Auth if n == 2 || n == 3 => Some(Credentials {
            user: (n == 3).then(|| args.arg(1).to_vec()),
            password: args.arg(n - 1).to_vec(),
            resp3,
        }),
        Route::Hello if n > 1 => {
            let resp3 = match parse_int(args.arg(1)) {
                Some(2) => false,
                Some(3) => true,
                _ => return None,
            };
            let mut i = 2;
            while i < n {
                if args.arg(i).eq_ignore_ascii_case(b"AUTH") && i + 2 < n {
                    return Some(Credentials {
                        user: Some(args.arg(i + 1).to_vec()),
                        password: args.arg(i + 2).to_vec(),
                        resp3,
                    });
                }
                i += 1 + usize::from(args.arg(i).eq_ignore_ascii_case(b"SETNAME"));
            }
            None
        }
        _ => None,
    }
}

fn check_password(state: &mut State, ctx: &View<'_>, user: Option<&[u8]>, pass: &[u8]) -> Outcome {
    if ctx.config.auth_passthrough {
        // Redis itself accepted these credentials (the session logged in first).
        state.authenticated = true;
        return ok();
    }
    let Some(expected) = &ctx.config.client_password else {
        // Like Redis with no password: the default user takes any password
        // (`nopass`); other users do not exist.
        return match user {
            None => err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?"),
            Some(b"default") => {
                state.authenticated = true;
                ok()
            }
            Some(_) => err("WRONGPASS invalid username-password pair or user is disabled."),
        };
    };
    let user_ok = user.is_none_or(|u| u == b"default");
    if same_secret(pass, expected.0.as_bytes()) && user_ok {
        state.authenticated = true;
        return ok();
    }
    refuse_auth(
        state,
        ctx,
        "AUTH",
        "WRONGPASS invalid username-password pair or user is disabled.",
    )
}

/// A refused password (AUTH or PROXY AUTH): counted, logged (the 1st, 2nd, 4th …
/// refusal of a connection, not every one), and the connection is closed at the
/// [`MAX_AUTH_FAILURES`]th, so guessing costs a connection every few tries.
fn refuse_auth(state: &mut State, ctx: &View<'_>, what: &str, refused: &str) -> Outcome {
    state.auth_failures += 1;
    crate::stats::add(&ctx.stats.auth_failures, 1);
    let n = state.auth_failures;
    if n.is_power_of_two() {
        tracing::warn!(session = state.id, peer = %state.peer, failures = n, "{what} refused");
    }
    if n >= MAX_AUTH_FAILURES {
        tracing::warn!(session = state.id, peer = %state.peer, failures = n, "closing client after repeated {what} failures");
        let mut out = Vec::new();
        reply::error(&mut out, refused);
        return Outcome::Close(out);
    }
    err(refused)
}

/// `PROXY …`: `PROXY AUTH <admin_password>` makes the session an admin; the
/// subcommands that change the proxy (`CIRCUIT`, `RESETSTATS`) need one, so a
/// local process without the password cannot force a database's circuit open.
///
/// `deny_commands: [proxy]` refuses all of it for that database, and with
/// `admin_only_info: true` the reports (`INFO`, `HEALTH`, `STATS`) need an admin
/// session too.
fn proxy<L: ArgList + ?Sized>(state: &mut State, ctx: &View<'_>, args: &L) -> Outcome {
    if state.db.denies_proxy() {
        return err(&format!(
            "NOPERM 'proxy' is denied by redis-sidecar's deny_commands for database {}",
            state.db.label()
        ));
    }
    let mut buf = [0u8; 32];
    match upper(args.arg(1), &mut buf).unwrap_or(b"") {
        b"AUTH" if args.count() != 3 => wrong_sub_args(args),
        b"AUTH" => match &ctx.config.admin_password {
            None => err("ERR PROXY AUTH: no admin_password is configured"),
            Some(p) if same_secret(args.arg(2), p.0.as_bytes()) => {
                state.admin = true;
                ok()
            }
            Some(_) => refuse_auth(state, ctx, "PROXY AUTH", "WRONGPASS invalid admin password"),
        },
        b"INFO" | b"HEALTH" | b"STATS" | b"CLIENTS" if ctx.config.admin_only_info && !state.admin => err(
            "NOPERM PROXY INFO, HEALTH and STATS need an admin session (admin_only_info is true): send PROXY AUTH <admin_password> first",
        ),
        b"SLOWLOG" if !state.admin && args.count() > 2 && args.arg(2).eq_ignore_ascii_case(b"RESET") => err(
            "NOPERM PROXY SLOWLOG RESET needs an admin session: set admin_password and send PROXY AUTH <admin_password> first",
        ),
        b"SLOWLOG" if ctx.config.admin_only_info && !state.admin => err(
            "NOPERM PROXY SLOWLOG needs an admin session (admin_only_info is true): send PROXY AUTH <admin_password> first",
        ),
        b"CHECK" if ctx.config.admin_only_info && !state.admin => err(
            "NOPERM PROXY CHECK needs an admin session (admin_only_info is true): send PROXY AUTH <admin_password> first",
        ),
        b"CHECK" => proxy_check(ctx, args),
        b"LOGLEVEL" if !state.admin && args.count() > 2 => err(
            "NOPERM PROXY LOGLEVEL <filter> needs an admin session: set admin_password and send PROXY AUTH <admin_password> first",
        ),
        b"RELOAD" if args.count() != 2 => wrong_sub_args(args),
        b"RELOAD" if !state.admin && ctx.config.admin_password.is_some() => err(
            "NOPERM PROXY RELOAD needs an admin session: send PROXY AUTH <admin_password> first",
        ),
        b"RELOAD" => proxy_reload(ctx),
        b"CIRCUIT" | b"RESETSTATS" if !state.admin => err(
            "NOPERM PROXY CIRCUIT and PROXY RESETSTATS need an admin session: set admin_password and send PROXY AUTH <admin_password> first",
        ),
        _ => Outcome::Reply(admin::proxy(ctx, args)),
    }
}

/// `PROXY RELOAD`: the server reloads the configuration from its file; the
/// reply (a summary of what changed, or why nothing did) keeps its place.
fn proxy_reload(ctx: &View<'_>) -> Outcome {
    let Some(done) = ctx.request_reload() else {
        return err("ERR the proxy is shutting down");
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut out = Vec::new();
        match done.await {
            Ok(Ok(summary)) => reply::bulk(&mut out, format!("reloaded: {summary}").as_bytes()),
            Ok(Err(why)) => reply::error(
                &mut out,
                &format!("ERR reload refused, nothing changed: {why}"),
            ),
            Err(_) => reply::error(&mut out, "ERR the proxy is shutting down"),
        }
        let _ = tx.send(bytes::Bytes::from(out));
    });
    Outcome::Later(rx)
}

/// Checks that run now (`PROXY CHECK`): one at a time, proxy-wide, since each
/// opens a connection per database.
static CHECK_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// `PROXY CHECK [JSON] [READONLY]`: the report of `redis-sidecar check`, live.
fn proxy_check<L: ArgList + ?Sized>(ctx: &View<'_>, args: &L) -> Outcome {
    use std::sync::atomic::Ordering::{Acquire, Release};
    let (mut json, mut read_only) = (false, false);
    for i in 2..args.count() {
        let mut buf = [0u8; 32];
        match upper(args.arg(i), &mut buf).unwrap_or(b"") {
            b"JSON" => json = true,
            b"READONLY" => read_only = true,
            _ => return err("ERR PROXY CHECK [JSON] [READONLY]"),
        }
    }
    if CHECK_RUNNING.swap(true, Acquire) {
        return err("ERR a PROXY CHECK is already running; try again when it is done");
    }
    let config = ctx.live.config.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // Another check may start once this one ends, however it ends.
        struct Running;
        impl Drop for Running {
            fn drop(&mut self) {
                CHECK_RUNNING.store(false, Release);
            }
        }
        let running = Running;
        let opts = crate::check::CheckOptions { read_only };
        let report = crate::check::run(&config, opts).await;
        drop(running);
        let text = if json {
            report.render_json()
        } else {
            report.render_text()
        };
        let mut out = Vec::new();
        reply::bulk(&mut out, text.as_bytes());
        let _ = tx.send(bytes::Bytes::from(out));
    });
    Outcome::Later(rx)
}

/// Failed AUTH attempts after which a connection is closed.
const MAX_AUTH_FAILURES: u32 = 10;

/// The pause before the reply to the `n`th refused AUTH / PROXY AUTH on a
/// connection: none for the first (a typo costs nothing), then 10 ms doubling per
/// refusal, at most [`MAX_AUTH_DELAY`]. Only that client waits: the pause is taken
/// in its own session task, and shutdown or CLIENT KILL cut it short.
pub(super) fn auth_delay(n: u32) -> std::time::Duration {
    if n <= 1 {
        return std::time::Duration::ZERO;
    }
    let ms = 10u64.saturating_mul(1 << (n - 2).min(16));
    std::time::Duration::from_millis(ms).min(MAX_AUTH_DELAY)
}

/// The longest pause between refused AUTH attempts.
pub(super) const MAX_AUTH_DELAY: std::time::Duration = std::time::Duration::from_secs(1);

/// Compares a password with the expected one in time that depends only on their
/// lengths, not on where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for i in 0..given.len().max(expected.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(a ^ b);
    }
    diff == 0
}

fn auth<L: ArgList + ?Sized>(state: &mut State, ctx: &View<'_>, args: &L) -> Outcome {
    match args.count() {
        2 => check_password(state, ctx, None, args.arg(1)),
        3 => check_password(state, ctx, Some(args.arg(1)), args.arg(2)),
        1 => wrong_args(args),
        _ => err("ERR syntax error"),
    }
}

/// `(major, minor)` of a version string such as `7.0.15`.
fn major_minor(version: &[u8]) -> Option<(u32, u32)> {
    let text = std::str::from_utf8(version).ok()?;
    let mut parts = text.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

fn hello<L: ArgList + ?Sized>(state: &mut State, ctx: &View<'_>, args: &L) -> Outcome {
    let mut i = 1;
    let mut protocol = None;
    if args.count() > 1 {
        match parse_int(args.arg(1)) {
            Some(2) => protocol = Some(false),
            Some(3) => protocol = Some(true),
            Some(_) => return err("NOPROTO unsupported protocol version"),
            None => return err("ERR Protocol version is not an integer or out of range"),
        }
        i = 2;
    }
    let mut name = None;
    while i < args.count() {
        let mut buf = [0u8; 32];
        let opt = upper(args.arg(i), &mut buf).unwrap_or(b"");
        let more = args.count() - i - 1;
        if opt == b"AUTH" && more >= 2 {
            if let Outcome::Reply(r) =
                check_password(state, ctx, Some(args.arg(i + 1)), args.arg(i + 2))
            {
                if r != b"+OK\r\n" {
                    return Outcome::Reply(r);
                }
            }
            i += 3;
        } else if opt == b"SETNAME" && more >= 1 {
            name = Some(args.arg(i + 1).to_vec());
            i += 2;
        } else {
            return err(&format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(args.arg(i))
            ));
        }
    }
    if !state.authenticated {
        // In the words of the upstream's version (Redis 7.2 added `<proto>`).
        let identity = state.db.config.upstream.endpoint.identity();
        let proto = match identity.as_ref().and_then(|id| major_minor(&id.version)) {
            Some(v) if v < (7, 2) => "",
            _ => "<proto> ",
        };
        return err(&format!("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO {proto}AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time"));
    }
    if let Some(n) = name {
        if !valid_name(&n) {
            return err("ERR Client names cannot contain spaces, newlines or special characters.");
        }
        state.name = (!n.is_empty()).then_some(n);
    }
    if let Some(resp3) = protocol {
        state.resp3 = resp3;
    }
    let mut out = Vec::new();
    if state.resp3 {
        out.extend_from_slice(b"%7\r\n");
    } else {
        reply::array_header(&mut out, 14);
    }
    // The upstream's server, version, role and modules (clients go by them);
    // until the proxy has learnt them, its own name and version.
    let identity = state.db.config.upstream.endpoint.identity();
    let (server, version) = match &identity {
        Some(id) => (&id.server[..], &id.version[..]),
        None => (&b"redis-sidecar"[..], env!("CARGO_PKG_VERSION").as_bytes()),
    };
    for (k, v) in [(&b"server"[..], server), (b"version", version)] {
        reply::bulk(&mut out, k);
        reply::bulk(&mut out, v);
    }
    reply::bulk(&mut out, b"proto");
    reply::integer(&mut out, if state.resp3 { 3 } else { 2 });
    reply::bulk(&mut out, b"id");
    reply::integer(&mut out, state.id as i64);
    let role = identity.as_ref().map_or(&b"master"[..], |id| &id.role[..]);
    for (k, v) in [(&b"mode"[..], &b"standalone"[..]), (b"role", role)] {
        reply::bulk(&mut out, k);
        reply::bulk(&mut out, v);
    }
    reply::bulk(&mut out, b"modules");
    match &identity {
        Some(id) => out.extend_from_slice(&id.modules[usize::from(state.resp3)]),
        None => reply::array_header(&mut out, 0),
    }
    Outcome::Reply(out)
}

pub(super) fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// `CLIENT INFO` / `CLIENT LIST` text for these sessions.
fn client_lines(ctx: &View<'_>, clients: &[Arc<Client>], resp3: bool) -> Vec<u8> {
    let text: String = clients.iter().map(|c| c.line(&ctx.clients)).collect();
    let mut out = Vec::new();
    reply::verbatim(&mut out, text.as_bytes(), resp3);
    out
}

/// Parses a client id as Redis does for CLIENT KILL ID (positive integer).
fn client_id(arg: &[u8]) -> Option<u64> {
    parse_int(arg).filter(|&n| n > 0).map(|n| n as u64)
}

/// `TYPE` of CLIENT LIST / CLIENT KILL into the filter; `Err` is Redis's reply.
fn client_type(filter: &mut Filter, arg: &[u8]) -> Result<(), Outcome> {
    let t = arg.to_ascii_lowercase();
    match t.as_slice() {
        b"normal" => filter.pubsub = Some(false),
        b"pubsub" => filter.pubsub = Some(true),
        b"master" | b"replica" | b"slave" => filter.none = true,
        _ => {
            return Err(err(&format!(
                "ERR Unknown client type '{}'",
                String::from_utf8_lossy(arg)
            )))
        }
    }
    Ok(())
}

/// `CLIENT LIST [TYPE type] [ID id …]`, from the proxy's own sessions.
fn client_list<L: ArgList + ?Sized>(state: &State, ctx: &View<'_>, args: &L) -> Outcome {
    let n = args.count();
    let mut filter = Filter::default();
    if n == 4 && args.arg(2).eq_ignore_ascii_case(b"TYPE") {
        if let Err(e) = client_type(&mut filter, args.arg(3)) {
            return e;
        }
    } else if n >= 4 && args.arg(2).eq_ignore_ascii_case(b"ID") {
        for i in 3..n {
            match parse_int(args.arg(i)) {
                Some(id) if id > 0 => filter.ids.push(id as u64),
                Some(_) => {}
                None => return err("ERR Invalid client ID"),
            }
        }
        if filter.ids.is_empty() {
            filter.none = true;
        }
    } else if n != 2 {
        return err("ERR syntax error");
    }
    Outcome::Reply(client_lines(ctx, &ctx.clients.select(&filter), state.resp3))
}

/// `CLIENT KILL addr` or `CLIENT KILL <filter> <value> …`, on the proxy's sessions.
fn client_kill<L: ArgList + ?Sized>(state: &State, ctx: &View<'_>, args: &L) -> Outcome {
    let n = args.count();
    let mut filter = Filter::default();
    if n == 3 {
        // The old form: one address; the caller may kill itself.
        filter.addr = Some(String::from_utf8_lossy(args.arg(2)).into_owned());
        let (killed, myself) = ctx.clients.kill(&filter, state.id, false);
        return match (killed, myself) {
            (0, _) => err("ERR No such client"),
            (_, true) => Outcome::Close(b"+OK\r\n".to_vec()),
            _ => ok(),
        };
    }
    if n < 3 {
        return wrong_sub_args(args);
    }
    let mut skip_me = true;
    let mut i = 2;
    while i < n {
        if i + 1 >= n {
            return err("ERR syntax error");
        }
        let mut buf = [0u8; 32];
        let opt = upper(args.arg(i), &mut buf).unwrap_or(b"");
        let value = args.arg(i + 1);
        let text = || String::from_utf8_lossy(value).into_owned();
        match opt {
            b"ID" => match client_id(value) {
                Some(id) => filter.ids = vec![id],
                None => return err("ERR client-id should be greater than 0"),
            },
            b"TYPE" => {
                if let Err(e) = client_type(&mut filter, value) {
                    return e;
                }
            }
            b"ADDR" => filter.addr = Some(text()),
            b"LADDR" => filter.laddr = Some(text()),
            b"USER" => filter.user = Some(text()),
            b"MAXAGE" => match parse_int(value) {
                Some(age) => filter.maxage = Some(age.max(0) as u64),
                None => return err("ERR value is not an integer or out of range"),
            },
            b"SKIPME" if value.eq_ignore_ascii_case(b"yes") => skip_me = true,
            b"SKIPME" if value.eq_ignore_ascii_case(b"no") => skip_me = false,
            _ => return err("ERR syntax error"),
        }
        i += 2;
    }
    let (killed, myself) = ctx.clients.kill(&filter, state.id, skip_me);
    if let Some(user) = filter.user.filter(|u| killed == 0 && u != "default") {
        // No session of that user: Redis says whether the user exists at all
        // (`-ERR No such user '…'`, as Redis answers for an unknown user).
        return no_such_user(state, user);
    }
    let mut out = Vec::new();
    reply::integer(&mut out, killed as i64);
    if myself {
        Outcome::Close(out)
    } else {
        Outcome::Reply(out)
    }
}

/// `CLIENT KILL USER name` that killed no session: `:0` if Redis knows the user
/// (`ACL GETUSER`, on the database's shared connection), Redis's error if not. If
/// Redis will not say (the proxy's user may not run ACL), `:0`.
fn no_such_user(state: &State, user: String) -> Outcome {
    let db = state.db.clone();
    let id = state.id;
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let args: [&[u8]; 3] = [b"ACL", b"GETUSER", user.as_bytes()];
        let out = match super::prefix::call(&db, id, &args, true).await {
            Ok(r) if r.as_ref() == b"$-1\r\n" || r.as_ref() == b"*-1\r\n" => {
                let mut out = Vec::new();
                reply::error(&mut out, &format!("ERR No such user '{user}'"));
                bytes::Bytes::from(out)
            }
            _ => bytes::Bytes::from_static(b":0\r\n"),
        };
        let _ = tx.send(out);
    });
    Outcome::Later(rx)
}

/// `CLIENT UNBLOCK id [TIMEOUT|ERROR]`: a session blocked on an exclusive
/// connection is unblocked there (the id is translated to that connection's id on
/// Redis, and on a cluster sent to the node the connection is on now, after any
/// move); any other session is not blocked, as Redis answers `0`.
fn client_unblock<L: ArgList + ?Sized>(ctx: &View<'_>, args: &L) -> Outcome {
    let n = args.count();
    if n < 3 {
        return wrong_sub_args(args);
    }
    if n > 4 {
        return err("ERR syntax error");
    }
    let Some(id) = parse_int(args.arg(2)) else {
        return err("ERR value is not an integer or out of range");
    };
    if n == 4
        && !args.arg(3).eq_ignore_ascii_case(b"TIMEOUT")
        && !args.arg(3).eq_ignore_ascii_case(b"ERROR")
    {
        return err("ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR");
    }
    let held = u64::try_from(id)
        .ok()
        .and_then(|id| ctx.clients.get(id))
        .and_then(|c| c.blocked_on());
    if let Some(ex) = held {
        let (upstream, node) = ex.now();
        if upstream != 0 {
            let mut cmd: Vec<Vec<u8>> = vec![
                b"CLIENT".to_vec(),
                b"UNBLOCK".to_vec(),
                upstream.to_string().into_bytes(),
            ];
            if n == 4 {
                cmd.push(args.arg(3).to_vec());
            }
            // An id names a connection of one server: on a cluster, the node
            // the connection is on now.
            return match node {
                Some(node) => Outcome::ForwardAt(ex.db, node, encode(&cmd[..])),
                None => Outcome::ForwardTo(ex.db, encode(&cmd[..])),
            };
        }
    }
    Outcome::Reply(b":0\r\n".to_vec())
}

fn client<L: ArgList + ?Sized>(state: &mut State, ctx: &View<'_>, args: &L) -> Outcome {
    let mut buf = [0u8; 32];
    let sub = upper(args.arg(1), &mut buf).unwrap_or(b"");
    let n = args.count();
    match sub {
        b"ID" if n == 2 => {
            let mut out = Vec::new();
            reply::integer(&mut out, state.id as i64);
            Outcome::Reply(out)
        }
        b"GETNAME" if n == 2 => {
            let mut out = Vec::new();
            match &state.name {
                Some(name) => reply::bulk(&mut out, name),
                None => reply::nil(&mut out, state.resp3),
            }
            Outcome::Reply(out)
        }
        b"SETNAME" if n == 3 => {
            let name = args.arg(2);
            if !valid_name(name) {
                return err("ERR Client names cannot contain spaces, newlines or special characters.");
            }
            state.name = (!name.is_empty()).then(|| name.to_vec());
            ok()
        }
        b"SETINFO" if n == 4 => {
            let mut b2 = [0u8; 32];
            let attr = upper(args.arg(2), &mut b2).unwrap_or(b"");
            let value = args.arg(3);
            if !valid_name(value) && !value.is_empty() {
                return err(&format!(
                    "ERR {} cannot contain spaces, newlines or special characters.",
                    String::from_utf8_lossy(args.arg(2)).to_ascii_lowercase()
                ));
            }
            let v = (!value.is_empty()).then(|| value.to_vec());
            match attr {
                b"LIB-NAME" => state.lib_name = v,
                b"LIB-VER" => state.lib_ver = v,
                _ => {
                    return err(&format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(args.arg(2))
                    ))
                }
            }
            ok()
        }
        b"INFO" if n == 2 => {
            let me: Vec<Arc<Client>> = ctx.clients.get(state.id).into_iter().collect();
            Outcome::Reply(client_lines(ctx, &me, state.resp3))
        }
        b"LIST" => client_list(state, ctx, args),
        b"KILL" => client_kill(state, ctx, args),
        b"UNBLOCK" => client_unblock(ctx, args),
        b"NO-EVICT" | b"NO-TOUCH" if n == 3 => {
            let v = args.arg(2);
            if v.eq_ignore_ascii_case(b"on") || v.eq_ignore_ascii_case(b"off") {
                ok()
            } else {
                err("ERR syntax error")
            }
        }
        // With tracking off these answer as Redis does (with it on, `tracking.rs`
        // sends them to the tracking connection; it handles CLIENT TRACKING too).
        b"TRACKINGINFO" if n == 2 => {
            let mut out = Vec::new();
            if state.resp3 {
                out.extend_from_slice(b"%3\r\n");
            } else {
                reply::array_header(&mut out, 6);
            }
            reply::bulk(&mut out, b"flags");
            out.extend_from_slice(if state.resp3 { b"~1\r\n" } else { b"*1\r\n" });
            reply::bulk(&mut out, b"off");
            reply::bulk(&mut out, b"redirect");
            reply::integer(&mut out, -1);
            reply::bulk(&mut out, b"prefixes");
            reply::array_header(&mut out, 0);
            Outcome::Reply(out)
        }
        b"GETREDIR" if n == 2 => Outcome::Reply(b":-1\r\n".to_vec()),
        b"CACHING" if n == 3 => err("ERR CLIENT CACHING can be called only when the client is in tracking mode with OPTIN or OPTOUT mode enabled"),
        b"PAUSE" | b"UNPAUSE" => Outcome::Pause(note_pause(state, ctx, args)),
        b"HELP" => Outcome::Forward(None),
        b"" => wrong_args(args),
        // Known, with the wrong number of arguments: Redis's error.
        b"ID" | b"GETNAME" | b"SETNAME" | b"SETINFO" | b"INFO" | b"NO-EVICT" | b"NO-TOUCH"
        | b"TRACKINGINFO" | b"GETREDIR" | b"CACHING" => wrong_sub_args(args),
        _ => {
            // A subcommand Redis does not have (redis-py 8 sends `CLIENT
            // MAINT_NOTIFICATIONS` on connect): Redis's own refusal, when the
            // upstream is known to lack it; else the proxy's.
            let cmd = crate::command::Descriptor::of(args);
            let upstream = &state.db.config.upstream.endpoint;
            match super::prefix::unknown(&cmd, args, upstream) {
                Some(text) => err(&text),
                None => err(&format!(
                    "ERR CLIENT {} is not supported by redis-sidecar: it would change a shared upstream connection",
                    String::from_utf8_lossy(args.arg(1)).to_ascii_uppercase()
                )),
            }
        }
    }
}

/// `CLIENT PAUSE time [WRITE|ALL]` / `CLIENT UNPAUSE`, on its way to Redis: every
/// database on the same standalone server (or Sentinel primary) knows until when
/// writes are paused, so that its sessions send their writes meanwhile on
/// connections of their own (`dispatch.rs`). A request Redis will refuse (a bad
/// time or mode) changes nothing; one it refuses for another reason (a user
/// without the command) is taken back when its error arrives (`queue.rs`).
fn note_pause<L: ArgList + ?Sized>(state: &State, ctx: &View<'_>, args: &L) -> PauseNoted {
    let mut noted = PauseNoted::default();
    let n = args.count();
    let all = n == 3 || (n == 4 && args.arg(3).eq_ignore_ascii_case(b"ALL"));
    let pause = if args.arg(1).eq_ignore_ascii_case(b"UNPAUSE") {
        if n != 2 {
            return noted;
        }
        None
    } else {
        let mode_ok = n == 3
            || (n == 4
                && (args.arg(3).eq_ignore_ascii_case(b"WRITE")
                    || args.arg(3).eq_ignore_ascii_case(b"ALL")));
        match parse_int(args.arg(2)) {
            Some(ms) if mode_ok && ms >= 0 => Some(std::time::Duration::from_millis(ms as u64)),
            _ => return noted,
        }
    };
    let here = &state.db.config.upstream;
    if here.cluster.is_some() {
        return noted;
    }
    for db in ctx.router.databases() {
        let there = &db.config.upstream;
        if there.same_redis(here) {
            let n = match pause {
                Some(time) if all => there.endpoint.pause_all(time),
                Some(time) => there.endpoint.pause_writes(time),
                None => there.endpoint.unpause(),
            };
            noted.0.push((there.endpoint.clone(), n));
        }
    }
    noted
}

/// MOVE key db / COPY src dst DB db / SWAPDB a b: translate client-facing indexes
/// to the upstream's, when the databases live on the same server.
/// `MOVE`/`COPY … DB`/`SWAPDB` with the client's database indexes translated to
/// the upstream's, for the session's own connection to queue (inside a RESP3
/// subscriber's transaction on its subscriber connection); `None` when the proxy
/// would answer it itself (an error: arity, an index that is no database, another
/// server).
pub(super) fn cross_db_request<L: ArgList + ?Sized>(
    state: &State,
    ctx: &View<'_>,
    args: &L,
) -> Option<Vec<u8>> {
    match cross_db(state, ctx, args) {
        Outcome::Forward(Some(bytes)) => Some(bytes),
        _ => None,
    }
}

fn cross_db<L: ArgList + ?Sized>(state: &State, ctx: &View<'_>, args: &L) -> Outcome {
    let mut buf = [0u8; 32];
    let name = upper(args.arg(0), &mut buf).unwrap_or(b"").to_vec();
    let positions: Vec<usize> = match name.as_slice() {
        b"MOVE" if args.count() == 3 => vec![2],
        b"SWAPDB" if args.count() == 3 => vec![1, 2],
        b"COPY" => (3..args.count().saturating_sub(1))
            .filter(|&i| args.arg(i).eq_ignore_ascii_case(b"DB"))
            .map(|i| i + 1)
            .take(1)
            .collect(),
        _ => return wrong_args(args),
    };
    if name == b"SWAPDB" {
        // Redis reads both indexes before it looks them up.
        for (pos, which) in [(1, "first"), (2, "second")] {
            if parse_int(args.arg(pos)).is_none() {
                return err(&format!("ERR invalid {which} DB index"));
            }
        }
    }
    let mut new_args: Vec<Vec<u8>> = (0..args.count()).map(|i| args.arg(i).to_vec()).collect();
    for pos in positions {
        let target = match db_arg(ctx, args.arg(pos)) {
            Ok(db) => db,
            Err(refused) => return refused,
        };
        if !state.db.same_server(target) {
            return err(&format!(
                "ERR {} across upstream servers is not supported: database {} lives on {}, database {} on {}",
                String::from_utf8_lossy(&name),
                state.db.label(),
                state.db.config.upstream.address(),
                target.label(),
                target.config.upstream.address()
            ));
        }
        new_args[pos] = target.config.upstream.db.to_string().into_bytes();
    }
    Outcome::Forward(Some(encode(&new_args[..])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_by_major_and_minor() {
        assert_eq!(major_minor(b"7.0.15"), Some((7, 0)));
        assert_eq!(major_minor(b"7.2.4"), Some((7, 2)));
        assert_eq!(major_minor(b"255.255.255"), Some((255, 255)));
        assert_eq!(major_minor(b"x"), None);
        assert!(major_minor(b"6.2.14").unwrap() < (7, 2));
    }

    #[test]
    fn the_auth_delay_grows_from_nothing_to_a_second() {
        let ms: Vec<u128> = (1..=10).map(|n| auth_delay(n).as_millis()).collect();
        assert_eq!(ms, [0, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        assert_eq!(auth_delay(u32::MAX), MAX_AUTH_DELAY);
    }
}
