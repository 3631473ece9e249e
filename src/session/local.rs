//! Commands the proxy answers itself because they concern the client's own
//! connection: SELECT, AUTH, HELLO, CLIENT …, RESET, QUIT, and PROXY (admin). Also
//! the rewriting of cross-database commands (MOVE, COPY … DB, SWAPDB).

use super::{encode, State};
use crate::admin;
use crate::command::{upper, ArgList, Route};
use crate::context::Context;
use crate::protocol::reply;
use crate::protocol::request::parse_int;

/// What the session does after a local command.
pub(super) enum Outcome {
    /// Write this reply.
    Reply(Vec<u8>),
    /// Forward upstream: the request as received (`None`) or re-encoded.
    Forward(Option<Vec<u8>>),
    /// Write this reply, then close the connection.
    Close(Vec<u8>),
}

fn err(text: &str) -> Outcome {
    let mut out = Vec::new();
    reply::error(&mut out, text);
    Outcome::Reply(out)
}

fn ok() -> Outcome {
    Outcome::Reply(b"+OK\r\n".to_vec())
}

fn wrong_args<L: ArgList + ?Sized>(args: &L) -> Outcome {
    err(&format!(
        "ERR wrong number of arguments for '{}' command",
        String::from_utf8_lossy(args.arg(0)).to_ascii_lowercase()
    ))
}

/// Handles a request that is not a plain forward on an authenticated session.
pub(super) fn handle<L: ArgList + ?Sized>(
    state: &mut State,
    ctx: &Context,
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
        Route::Proxy => Outcome::Reply(admin::proxy(ctx, args)),
        Route::Auth => auth(state, ctx, args),
        Route::Hello => hello(state, ctx, args),
        Route::Client => client(state, args),
        Route::Quit => Outcome::Close(b"+OK\r\n".to_vec()),
        Route::Reset => {
            state.db = ctx.router.databases()[0].clone();
            state.db_index = state.db.config.index;
            state.name = None;
            state.resp3 = false;
            state.authenticated = ctx.config.client_password.is_none();
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

fn select<L: ArgList + ?Sized>(state: &mut State, ctx: &Context, args: &L) -> Outcome {
    if args.count() != 2 {
        return wrong_args(args);
    }
    let Some(index) = parse_int(args.arg(1)) else {
        return err("ERR value is not an integer or out of range");
    };
    match ctx.router.get(index) {
        Some(db) => {
            state.db = db.clone();
            state.db_index = db.config.index;
            ok()
        }
        None => err("ERR DB index is out of range"),
    }
}

fn check_password(state: &mut State, ctx: &Context, user: Option<&[u8]>, pass: &[u8]) -> Outcome {
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
    if user_ok && pass == expected.0.as_bytes() {
        state.authenticated = true;
        ok()
    } else {
        err("WRONGPASS invalid username-password pair or user is disabled.")
    }
}

fn auth<L: ArgList + ?Sized>(state: &mut State, ctx: &Context, args: &L) -> Outcome {
    match args.count() {
        2 => check_password(state, ctx, None, args.arg(1)),
        3 => check_password(state, ctx, Some(args.arg(1)), args.arg(2)),
        _ => err("ERR syntax error"),
    }
}

fn hello<L: ArgList + ?Sized>(state: &mut State, ctx: &Context, args: &L) -> Outcome {
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
        return err("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
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
    for (k, v) in [
        ("server", "redis-sidecar"),
        ("version", env!("CARGO_PKG_VERSION")),
    ] {
        reply::bulk(&mut out, k.as_bytes());
        reply::bulk(&mut out, v.as_bytes());
    }
    reply::bulk(&mut out, b"proto");
    reply::integer(&mut out, if state.resp3 { 3 } else { 2 });
    reply::bulk(&mut out, b"id");
    reply::integer(&mut out, state.id as i64);
    for (k, v) in [("mode", "standalone"), ("role", "master")] {
        reply::bulk(&mut out, k.as_bytes());
        reply::bulk(&mut out, v.as_bytes());
    }
    reply::bulk(&mut out, b"modules");
    reply::array_header(&mut out, 0);
    Outcome::Reply(out)
}

fn valid_name(name: &[u8]) -> bool {
    name.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

/// `CLIENT INFO`-style line for this session.
fn client_line(state: &State) -> String {
    let s = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .into_owned()
    };
    format!(
        "id={} addr={} laddr= fd=0 name={} age=0 idle=0 flags=N db={} sub=0 psub=0 ssub=0 multi=-1 qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd=client|info user=default redir=-1 resp={} lib-name={} lib-ver={}\n",
        state.id,
        state.peer,
        s(&state.name),
        state.db_index,
        if state.resp3 { 3 } else { 2 },
        s(&state.lib_name),
        s(&state.lib_ver)
    )
}

fn client<L: ArgList + ?Sized>(state: &mut State, args: &L) -> Outcome {
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
                None if state.resp3 => out.extend_from_slice(b"_\r\n"),
                None => reply::nil(&mut out),
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
            let mut out = Vec::new();
            reply::bulk(&mut out, client_line(state).as_bytes());
            Outcome::Reply(out)
        }
        b"NO-EVICT" | b"NO-TOUCH" if n == 3 => {
            let v = args.arg(2);
            if v.eq_ignore_ascii_case(b"on") || v.eq_ignore_ascii_case(b"off") {
                ok()
            } else {
                err("ERR syntax error")
            }
        }
        b"LIST" | b"HELP" | b"PAUSE" | b"UNPAUSE" | b"KILL" => Outcome::Forward(None),
        b"" => wrong_args(args),
        _ => err(&format!(
            "ERR CLIENT {} is not supported by redis-sidecar: it would change a shared upstream connection",
            String::from_utf8_lossy(args.arg(1)).to_ascii_uppercase()
        )),
    }
}

/// MOVE key db / COPY src dst DB db / SWAPDB a b: translate client-facing indexes
/// to the upstream's, when the databases live on the same server.
fn cross_db<L: ArgList + ?Sized>(state: &mut State, ctx: &Context, args: &L) -> Outcome {
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
    let mut new_args: Vec<Vec<u8>> = (0..args.count()).map(|i| args.arg(i).to_vec()).collect();
    for pos in positions {
        let Some(index) = parse_int(args.arg(pos)) else {
            return err("ERR value is not an integer or out of range");
        };
        let Some(target) = ctx.router.get(index) else {
            return err("ERR DB index is out of range");
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
