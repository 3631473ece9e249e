//! `key_prefix`: a database whose keys live under a prefix of a shared upstream
//! keyspace. Every key argument gets the prefix on the way in (where the keys
//! are: `command::keys`, from the command table's key specs); replies that name
//! keys get it removed ([`Unprefix`]); the keyspace-wide commands run over
//! `SCAN MATCH prefix*` ([`Synth`]); what cannot be kept inside the prefix is
//! refused, naming the command. Sessions on a database without a prefix never
//! come here (one branch in `dispatch`).

use std::borrow::Cow;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::queue::error_text;
use crate::command::keys::{self, KeyKind};
use crate::command::{table, ArgList, Block, Descriptor, Family, Route};
use crate::protocol::reply;
use crate::protocol::request::encode_command;
use crate::protocol::value::{self, Value};
use crate::router::Database;
use crate::stats;
use crate::upstream::mux::{Batch, BatchReply, Retry};

/// How a reply that names keys is rewritten (the prefix removed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Unprefix {
    /// An array of keys (`KEYS`).
    List,
    /// `[cursor, [keys]]` (`SCAN`).
    Scan,
    /// An array whose first element is a key (`BLPOP`, `BZPOPMIN`, `LMPOP`,
    /// `BLMPOP`, `ZMPOP`, `BZMPOP` …); nil passes.
    FirstKey,
    /// `XREAD`/`XREADGROUP`: an array of `[key, entries]` (RESP2) or a map
    /// `key => entries` (RESP3).
    Streams,
    /// `SLOWLOG GET`: entries `[id, time, duration, [command…], addr, name]`
    /// whose command's key arguments (by the command table) lose the prefix.
    /// The slow log is the server's, so other databases' commands show too, as
    /// on Redis (with their own prefixes).
    Slowlog,
    /// `INFO` from a node of a Redis Cluster: `cluster_enabled:0` and
    /// `redis_mode:standalone`, as from the standalone server the client sees (not
    /// about prefixes, rewritten the same way; the prefix is not used).
    Info,
    /// A consumer-group command (`XPENDING`, `XCLAIM`, `XGROUP SETID` …): only
    /// its `-NOGROUP` error names the key.
    Nogroup,
}

/// Where a request on a prefixed database is planned: what its reply may be
/// rewritten by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    /// On its own: its reply is rewritten as it comes.
    Plain,
    /// Queued inside MULTI: its reply is an element of EXEC's, rewritten there
    /// ([`Rewrite::Exec`]); what runs over SCAN cannot be queued.
    InMulti,
    /// While subscribed: replies are not rewritten (they share the subscriber
    /// connection's stream).
    Subscribed,
}

impl Place {
    fn shown(self) -> &'static str {
        match self {
            Place::Plain => "",
            Place::InMulti => "inside MULTI",
            Place::Subscribed => "while subscribed",
        }
    }
}

/// How the reply to one request sent upstream is rewritten: the reply of one
/// command, or the elements of an EXEC's reply whose queued commands name keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Rewrite {
    One(Unprefix, Bytes),
    /// For each such command: its element in EXEC's reply as the client reads
    /// it (after the proxy's own replies are put in, `Session::splice_exec`),
    /// how, and the prefix it was queued with (a SELECT inside MULTI changes it).
    Exec(Vec<(usize, Unprefix, Bytes)>),
}

impl Rewrite {
    /// `reply`, complete, rewritten.
    pub(super) fn apply(&self, reply: Bytes) -> Bytes {
        match self {
            Rewrite::One(kind, prefix) => unprefix(*kind, prefix, reply),
            Rewrite::Exec(queued) => exec(queued, reply),
        }
    }
}

/// EXEC's reply with the elements of `queued` rewritten; a WATCH conflict
/// (`*-1`, `_`) or an error (nothing ran) passes unchanged.
fn exec(queued: &[(usize, Unprefix, Bytes)], reply: Bytes) -> Bytes {
    // RESP3 pushes (invalidations) may come first on the session's own connection.
    let Some(range) = reply::after_pushes(&reply) else {
        return reply;
    };
    let (at, frame) = (range.start, &reply[range]);
    if frame.starts_with(b"*-") {
        return reply;
    }
    // (A message published to the session itself inside the transaction comes
    // between the elements, not as one: passed on, not counted.)
    let Some(items) = reply::items(frame).filter(|_| frame.starts_with(b"*")) else {
        return reply;
    };
    let header = frame.iter().position(|&b| b == b'\n').map_or(0, |n| n + 1);
    let mut out = Vec::with_capacity(reply.len());
    out.extend_from_slice(&reply[..at + header]);
    let mut i = 0;
    for (e, push) in items {
        match queued.iter().find(|(n, ..)| *n == i).filter(|_| !push) {
            Some((_, kind, prefix)) => {
                out.extend_from_slice(&unprefix(*kind, prefix, Bytes::copy_from_slice(e)))
            }
            None => out.extend_from_slice(e),
        }
        i += usize::from(!push);
    }
    out.extend_from_slice(&reply[at + frame.len()..]);
    Bytes::from(out)
}

/// A keyspace-wide command the proxy runs itself over `SCAN MATCH prefix*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Synth {
    /// `DBSIZE`: the keys counted.
    DbSize,
    /// `FLUSHDB [ASYNC|SYNC]`: the keys unlinked, batch by batch.
    FlushDb,
    /// `RANDOMKEY`: see [`random_key`].
    RandomKey,
}

/// What happens to one request on a prefixed database.
pub(super) enum Plan {
    /// Sent upstream: re-encoded with prefixed keys (`None`: unchanged), its
    /// reply rewritten when it names keys.
    Forward {
        bytes: Option<Vec<u8>>,
        reply: Option<Unprefix>,
    },
    /// Answered by the proxy over SCAN.
    Synth(Synth),
    /// Refused: the error text (after `-`).
    Refuse(String),
}

/// Unchanged.
const SAME: Plan = Plan::Forward {
    bytes: None,
    reply: None,
};

/// DBSIZE, FLUSHDB and RANDOMKEY for a session logged in with its own
/// credentials (`auth_passthrough`): they would run with the proxy's.
pub(super) const PRIVATE_REFUSED: &[u8] = b"-ERR DBSIZE, FLUSHDB and RANDOMKEY are not supported \
on a database with key_prefix for a client logged in with its own credentials (auth_passthrough)\r\n";

/// SCAN batch size of the synthesized commands.
const SCAN_COUNT: &str = "1000";
/// RANDOMKEY attempts before falling back to SCAN.
const RANDOM_TRIES: usize = 16;

/// The command as the client wrote it, upper-cased, for error texts.
/// A request's command name as error texts show it.
pub(super) fn shown<L: ArgList + ?Sized>(args: &L) -> String {
    let name = args.arg(0);
    let name = &name[..name.len().min(64)];
    String::from_utf8_lossy(name).to_ascii_uppercase()
}

fn refuse<L: ArgList + ?Sized>(args: &L, why: &str) -> Plan {
    Plan::Refuse(format!(
        "ERR '{}' is not supported on a database with key_prefix ({why})",
        shown(args)
    ))
}

/// Redis's own refusal of a command or subcommand it does not have (the text after
/// `-`), for a request the proxy refuses (its keys cannot be located under a
/// prefix, or a CLIENT subcommand it does not run), when the upstream is known to
/// have no command the table lacks: the same Redis version or
/// an older one, and no modules. `None` otherwise: a newer Redis or a module may
/// have it, and then only the proxy's refusal is true.
pub(super) fn unknown<L: ArgList + ?Sized>(
    cmd: &Descriptor,
    args: &L,
    upstream: &crate::endpoint::Endpoint,
) -> Option<String> {
    let container = match cmd.info {
        None => None,
        Some(i) if i.has(table::CONTAINER) && !i.name.contains('|') && args.count() > 1 => {
            Some(i.name)
        }
        Some(_) => return None,
    };
    let identity = upstream.identity()?;
    let version = |v: &[u8]| -> Vec<u64> {
        String::from_utf8_lossy(v)
            .split('.')
            .map(|n| n.parse().unwrap_or(u64::MAX))
            .collect()
    };
    if identity.modules[0] != b"*0\r\n"
        || version(&identity.version) > version(table::REDIS_VERSION.as_bytes())
    {
        return None;
    }
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let mut message = match container {
        // Redis 7.0's texts (`processCommand`), its newlines made spaces.
        Some(name) => format!(
            "ERR unknown subcommand '{}'. Try {} HELP.",
            text(&args.arg(1)[..args.arg(1).len().min(128)]),
            name.to_ascii_uppercase()
        ),
        None => {
            let mut shown = String::new();
            let mut i = 1;
            while i < args.count() && shown.len() < 128 {
                let arg = args.arg(i);
                let room = 128 - shown.len();
                shown.push_str(&format!("'{}' ", text(&arg[..arg.len().min(room)])));
                i += 1;
            }
            let name = args.arg(0);
            format!(
                "ERR unknown command '{}', with args beginning with: {shown}",
                text(&name[..name.len().min(128)])
            )
        }
    };
    message = message.replace(['\r', '\n'], " ");
    Some(message)
}

/// The plan for a request classified as `cmd` on a database with `prefix`
/// (`place`: where its reply is rewritten, if at all).
pub(super) fn plan<L: ArgList + ?Sized>(
    prefix: &[u8],
    cmd: &Descriptor,
    args: &L,
    place: Place,
) -> Plan {
    match cmd.route {
        Route::CrossDb => {
            return refuse(
                args,
                "a database here is a key prefix: keys cannot move between databases",
            )
        }
        Route::Client if args.count() > 1 && args.arg(1).eq_ignore_ascii_case(b"TRACKING") => {
            return refuse(args, "invalidation messages would name prefixed keys")
        }
        Route::Forward | Route::Stateful(Family::Transaction | Family::Blocking) => {}
        Route::Stateful(Family::PubSub) => return subscription(prefix, cmd, args),
        _ => return SAME,
    }
    let name = cmd.info.map_or("", |i| i.name);
    let count = args.count();
    if name == "slowlog|get" {
        // While subscribed the entries stay as stored (the reply is not rewritten).
        return Plan::Forward {
            bytes: None,
            reply: (place != Place::Subscribed).then_some(Unprefix::Slowlog),
        };
    }
    let synth = match name {
        "dbsize" | "randomkey" if count != 1 => return SAME,
        "dbsize" => Some(Synth::DbSize),
        "randomkey" => Some(Synth::RandomKey),
        "flushdb" => match count {
            1 => Some(Synth::FlushDb),
            2 if args.arg(1).eq_ignore_ascii_case(b"ASYNC")
                || args.arg(1).eq_ignore_ascii_case(b"SYNC") =>
            {
                Some(Synth::FlushDb)
            }
            // Redis refuses it without running it.
            _ => return SAME,
        },
        _ => None,
    };
    let reply = match name {
        "keys" | "scan" => Some(if name == "keys" {
            Unprefix::List
        } else {
            Unprefix::Scan
        }),
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" | "lmpop" | "blmpop" | "zmpop" | "bzmpop" => {
            Some(Unprefix::FirstKey)
        }
        "xread" | "xreadgroup" => Some(Unprefix::Streams),
        "xpending"
        | "xautoclaim"
        | "xclaim"
        | "xgroup|setid"
        | "xgroup|createconsumer"
        | "xgroup|delconsumer"
        | "xinfo|consumers" => Some(Unprefix::Nogroup),
        _ => None,
    };
    let confined = match place {
        Place::Plain => false,
        Place::InMulti => synth.is_some(),
        Place::Subscribed => synth.is_some() || reply.is_some(),
    };
    if confined {
        return Plan::Refuse(format!(
            "ERR '{}' {} is not supported on a database with key_prefix (its reply \
             names keys or it runs over SCAN)",
            shown(args),
            place.shown()
        ));
    }
    if let Some(s) = synth {
        return Plan::Synth(s);
    }
    match name {
        "flushall" => {
            return refuse(
                args,
                "it would delete the keys of every database sharing the upstream; use FLUSHDB",
            )
        }
        "debug" => return refuse(args, "its keys cannot be located"),
        "keys" => {
            if count != 2 {
                return SAME;
            }
            let mut pattern = glob_escape(prefix);
            pattern.extend_from_slice(args.arg(1));
            return forward(args, &[(1, pattern)], reply);
        }
        "scan" => return scan(prefix, args),
        _ => {}
    }
    if count < 2 && cmd.info.is_some_and(|i| i.has(table::CONTAINER)) {
        // `OBJECT` alone: Redis's arity error.
        return SAME;
    }
    let mut found = keys::KeyArgs::new();
    if keys::locate(cmd.info, args, &mut found).is_err() {
        return refuse(args, "its keys cannot be located");
    }
    let mut replaced = Vec::with_capacity(found.len());
    for k in found {
        let arg = args.arg(k.index);
        match k.kind {
            KeyKind::Key => {}
            // Pub/sub is not per database on Redis either.
            KeyKind::Channel => continue,
            // Without `*`, SORT looks nothing up (BY nosort).
            KeyKind::Pattern if !arg.contains(&b'*') => continue,
            KeyKind::Pattern => {}
        }
        let mut p = Vec::with_capacity(prefix.len() + arg.len());
        p.extend_from_slice(prefix);
        p.extend_from_slice(arg);
        replaced.push((k.index, p));
    }
    if replaced.is_empty() && reply.is_none() {
        return SAME;
    }
    forward(args, &replaced, reply)
}

// ----------------------------------------------------------------------------
// Keyspace notifications
// ----------------------------------------------------------------------------

/// Where the key starts in a keyspace channel (`__keyspace@<db>__:<key>`).
fn keyspace_key_at(name: &[u8]) -> Option<usize> {
    const HEAD: &[u8] = b"__keyspace@";
    let rest = name.strip_prefix(HEAD)?;
    let end = rest.windows(3).position(|w| w == b"__:")?;
    Some(HEAD.len() + end + 3)
}

/// SUBSCRIBE / PSUBSCRIBE / UNSUBSCRIBE / PUNSUBSCRIBE: a keyspace channel (or
/// pattern) gets the prefix in front of its key part (`__keyspace@0__:k` ->
/// `__keyspace@0__:prefix:k`; a pattern gets the glob-escaped prefix). Other
/// channels are not per database on Redis either and pass unchanged.
fn subscription<L: ArgList + ?Sized>(prefix: &[u8], cmd: &Descriptor, args: &L) -> Plan {
    let name = cmd.info.map_or("", |i| i.name);
    let pattern = match name {
        "subscribe" | "unsubscribe" => false,
        "psubscribe" | "punsubscribe" => true,
        _ => return SAME,
    };
    let mut replaced = Vec::new();
    for i in 1..args.count() {
        let arg = args.arg(i);
        if let Some(at) = keyspace_key_at(arg) {
            let mut out = arg[..at].to_vec();
            if pattern {
                out.extend_from_slice(&glob_escape(prefix));
            } else {
                out.extend_from_slice(prefix);
            }
            out.extend_from_slice(&arg[at..]);
            replaced.push((i, out));
        }
    }
    if replaced.is_empty() {
        return SAME;
    }
    forward(args, &replaced, None)
}

/// `name` with `strip` removed right after its keyspace head, if it is there.
fn keyspace_strip<'a>(name: &'a [u8], strip: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = keyspace_key_at(name)?;
    let rest = name[at..].strip_prefix(strip)?;
    Some((&name[..at], rest))
}

/// A frame of a subscribed session on a prefixed database, as the client gets
/// it: keyspace channels and patterns lose the prefix; a keyspace or keyevent
/// notification about a key outside the prefix (another database's, seen
/// through a broad pattern such as `*`) is dropped (`None`).
pub(super) fn pubsub_frame(prefix: &[u8], frame: Bytes) -> Option<Bytes> {
    let Some((n, body)) = aggregate(&frame, 0, b"*>") else {
        return Some(frame);
    };
    let Some((kind, _)) = bulk_at(&frame, body) else {
        return Some(frame);
    };
    // Bulk strings as such; anything else (a subscription count) as its bytes.
    let mut items: Vec<(bool, Cow<[u8]>)> = Vec::with_capacity(n.min(8));
    let mut p = body;
    for _ in 0..n {
        match bulk_at(&frame, p) {
            Some((b, end)) => {
                items.push((true, Cow::Borrowed(b)));
                p = end;
            }
            None => match skip(&frame, p).and_then(|end| Some((end, frame.get(p..end)?))) {
                Some((end, raw)) => {
                    items.push((false, Cow::Borrowed(raw)));
                    p = end;
                }
                // Not a frame this understands: passed on as it is.
                None => return Some(frame),
            },
        }
    }
    let escaped = glob_escape(prefix);
    let unprefix = |item: &mut (bool, Cow<[u8]>), strip: &[u8]| -> bool {
        match keyspace_strip(&item.1, strip).filter(|_| item.0) {
            Some((head, rest)) => {
                item.1 = Cow::Owned([head, rest].concat());
                true
            }
            None => false,
        }
    };
    let kind = kind.to_ascii_lowercase();
    match (kind.as_slice(), items.len()) {
        (b"subscribe" | b"unsubscribe", 3) => {
            unprefix(&mut items[1], prefix);
        }
        (b"psubscribe" | b"punsubscribe", 3) => {
            unprefix(&mut items[1], &escaped);
        }
        (b"message", 3) | (b"pmessage", 4) => {
            let ch = items.len() - 2;
            if kind == b"pmessage" {
                unprefix(&mut items[1], &escaped);
            }
            if keyspace_key_at(&items[ch].1).is_some() {
                if !unprefix(&mut items[ch], prefix) {
                    return None;
                }
            } else if items[ch].1.starts_with(b"__keyevent@") {
                let payload = &mut items[ch + 1].1;
                match payload.strip_prefix(prefix) {
                    Some(rest) => *payload = Cow::Owned(rest.to_vec()),
                    None => return None,
                }
            }
        }
        _ => return Some(frame),
    }
    let mut out = Vec::with_capacity(frame.len());
    out.extend_from_slice(&frame[..body]);
    for (bulk, item) in &items {
        if *bulk {
            reply::bulk(&mut out, item);
        } else {
            out.extend_from_slice(item);
        }
    }
    out.extend_from_slice(&frame[p..]);
    Some(Bytes::from(out))
}

/// SCAN cursor [MATCH pattern] [COUNT n] [TYPE t]: the pattern prefixed, or
/// `MATCH prefix*` added.
fn scan<L: ArgList + ?Sized>(prefix: &[u8], args: &L) -> Plan {
    let count = args.count();
    if count < 2 || count % 2 != 0 {
        // Redis refuses it (wrong number of arguments, syntax error).
        return SAME;
    }
    let mut replaced = Vec::new();
    for i in (2..count).step_by(2) {
        if args.arg(i).eq_ignore_ascii_case(b"MATCH") {
            let mut p = glob_escape(prefix);
            p.extend_from_slice(args.arg(i + 1));
            replaced.push((i + 1, p));
        }
    }
    let mut all: Vec<Cow<[u8]>> = (0..count).map(|i| Cow::Borrowed(args.arg(i))).collect();
    for (i, p) in replaced.iter() {
        all[*i] = Cow::Borrowed(p);
    }
    let mut star = glob_escape(prefix);
    if replaced.is_empty() {
        star.push(b'*');
        all.push(Cow::Borrowed(b"MATCH"));
        all.push(Cow::Borrowed(&star));
    }
    let mut out = Vec::new();
    encode_command(&all, &mut out);
    Plan::Forward {
        bytes: Some(out),
        reply: Some(Unprefix::Scan),
    }
}

/// The request re-encoded with the arguments at the given indexes replaced.
fn forward<L: ArgList + ?Sized>(
    args: &L,
    replaced: &[(usize, Vec<u8>)],
    reply: Option<Unprefix>,
) -> Plan {
    let mut all: Vec<&[u8]> = (0..args.count()).map(|i| args.arg(i)).collect();
    for (i, p) in replaced {
        if let Some(a) = all.get_mut(*i) {
            *a = p;
        }
    }
    let mut out = Vec::with_capacity(all.iter().map(|a| a.len() + 16).sum());
    encode_command(&all, &mut out);
    Plan::Forward {
        bytes: Some(out),
        reply,
    }
}

/// `prefix` with the glob characters Redis's pattern matching knows escaped.
pub(super) fn glob_escape(prefix: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prefix.len() + 1);
    for &b in prefix {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

// ----------------------------------------------------------------------------
// Replies
// ----------------------------------------------------------------------------

/// The end of the line starting at `pos` (the index of its `\r`).
fn line_end(buf: &[u8], pos: usize) -> Option<usize> {
    let rel = buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")?;
    Some(pos + rel)
}

/// The type byte, the number after it and where the value's body starts.
fn header(buf: &[u8], pos: usize) -> Option<(u8, i64, usize)> {
    let t = *buf.get(pos)?;
    let end = line_end(buf, pos)?;
    let n = std::str::from_utf8(buf.get(pos + 1..end)?)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or(0);
    Some((t, n, end + 2))
}

/// Where the value at `pos` ends.
fn skip(buf: &[u8], pos: usize) -> Option<usize> {
    let (t, n, body) = header(buf, pos)?;
    match t {
        b'$' | b'=' | b'!' if n >= 0 => body.checked_add(n as usize)?.checked_add(2),
        b'*' | b'~' | b'>' | b'%' | b'|' if n > 0 => {
            let items = if matches!(t, b'%' | b'|') {
                n.saturating_mul(2)
            } else {
                n
            };
            let mut p = body;
            for _ in 0..items {
                p = skip(buf, p)?;
            }
            Some(p)
        }
        _ => Some(body),
    }
}

/// Copies the value at `pos` to `out`.
fn copy(buf: &[u8], pos: usize, out: &mut Vec<u8>) -> Option<usize> {
    let end = skip(buf, pos)?;
    out.extend_from_slice(buf.get(pos..end)?);
    Some(end)
}

/// Copies the value at `pos`, a key: a bulk string starting with `prefix` loses it.
fn key(buf: &[u8], pos: usize, prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let (t, n, body) = header(buf, pos)?;
    if t == b'$' && n >= 0 {
        let end = body.checked_add(n as usize)?;
        let data = buf.get(body..end)?;
        if let Some(rest) = data.strip_prefix(prefix) {
            reply::bulk(out, rest);
            return Some(end + 2);
        }
    }
    copy(buf, pos, out)
}

/// Copies the `SLOWLOG GET` entry at `pos` with its command's keys unprefixed.
fn slowlog_entry(buf: &[u8], pos: usize, prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let Some((m, mut p)) = aggregate(buf, pos, b"*").filter(|(m, _)| *m >= 4) else {
        return copy(buf, pos, out);
    };
    out.extend_from_slice(buf.get(pos..p)?);
    for _ in 0..3 {
        p = copy(buf, p, out)?;
    }
    p = logged_command(buf, p, prefix, out)?;
    for _ in 4..m {
        p = copy(buf, p, out)?;
    }
    Some(p)
}

/// Copies the array of bulk strings at `pos`, a logged command (as Redis
/// shortens it: at most 32 arguments, long ones cut), with the prefix removed
/// from its key arguments.
fn logged_command(buf: &[u8], pos: usize, prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let Some((n, body)) = aggregate(buf, pos, b"*") else {
        return copy(buf, pos, out);
    };
    // Each argument and where its frame starts.
    let mut args: Vec<&[u8]> = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut p = body;
    for _ in 0..n {
        match header(buf, p)? {
            (b'$', len, at) if len >= 0 => {
                let end = at.checked_add(len as usize)?;
                args.push(buf.get(at..end)?);
                starts.push(p);
                p = end.checked_add(2)?;
            }
            _ => return copy(buf, pos, out),
        }
    }
    let mut found = keys::KeyArgs::new();
    if keys::locate(Descriptor::of(&args).info, &args, &mut found).is_err() {
        found.clear();
    }
    out.extend_from_slice(buf.get(pos..body)?);
    for (i, &at) in starts.iter().enumerate() {
        if found
            .iter()
            .any(|k| k.index == i && k.kind != KeyKind::Channel)
        {
            key(buf, at, prefix, out)?;
        } else {
            copy(buf, at, out)?;
        }
    }
    Some(p)
}

/// `Some((count, body))` for an aggregate of any type in `types`.
fn aggregate(buf: &[u8], pos: usize, types: &[u8]) -> Option<(usize, usize)> {
    let (t, n, body) = header(buf, pos)?;
    (types.contains(&t) && n >= 0).then_some((n as usize, body))
}

/// Copies the array at `pos` with each element a key.
fn list(buf: &[u8], pos: usize, prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let Some((n, mut p)) = aggregate(buf, pos, b"*~") else {
        return copy(buf, pos, out);
    };
    out.extend_from_slice(buf.get(pos..p)?);
    for _ in 0..n {
        p = key(buf, p, prefix, out)?;
    }
    Some(p)
}

fn rewrite(kind: Unprefix, buf: &[u8], prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    match kind {
        Unprefix::List => list(buf, 0, prefix, out),
        Unprefix::Scan => {
            let Some((2, p)) = aggregate(buf, 0, b"*") else {
                return copy(buf, 0, out);
            };
            out.extend_from_slice(buf.get(..p)?);
            let p = copy(buf, p, out)?;
            list(buf, p, prefix, out)
        }
        Unprefix::FirstKey => {
            let Some((n, mut p)) = aggregate(buf, 0, b"*").filter(|(n, _)| *n > 0) else {
                return copy(buf, 0, out);
            };
            out.extend_from_slice(buf.get(..p)?);
            p = key(buf, p, prefix, out)?;
            for _ in 1..n {
                p = copy(buf, p, out)?;
            }
            Some(p)
        }
        Unprefix::Slowlog => {
            let Some((n, mut p)) = aggregate(buf, 0, b"*") else {
                return copy(buf, 0, out);
            };
            out.extend_from_slice(buf.get(..p)?);
            for _ in 0..n {
                p = slowlog_entry(buf, p, prefix, out)?;
            }
            Some(p)
        }
        Unprefix::Info => {
            let (t, n, body) = header(buf, 0)?;
            let Some(n) = usize::try_from(n).ok().filter(|_| t == b'$' || t == b'=') else {
                return copy(buf, 0, out);
            };
            let end = body.checked_add(n)?;
            let text = standalone_info(buf.get(body..end)?);
            out.push(t);
            out.extend_from_slice(text.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&text);
            out.extend_from_slice(b"\r\n");
            Some(end + 2)
        }
        Unprefix::Nogroup if buf.starts_with(b"-NOGROUP ") => nogroup(buf, prefix, out),
        Unprefix::Nogroup => copy(buf, 0, out),
        Unprefix::Streams => {
            if buf.starts_with(b"-NOGROUP ") {
                return nogroup(buf, prefix, out);
            }
            if let Some((n, mut p)) = aggregate(buf, 0, b"%") {
                out.extend_from_slice(buf.get(..p)?);
                for _ in 0..n {
                    p = key(buf, p, prefix, out)?;
                    p = copy(buf, p, out)?;
                }
                return Some(p);
            }
            let Some((n, mut p)) = aggregate(buf, 0, b"*") else {
                return copy(buf, 0, out);
            };
            out.extend_from_slice(buf.get(..p)?);
            for _ in 0..n {
                match aggregate(buf, p, b"*") {
                    Some((m, body)) if m > 0 => {
                        out.extend_from_slice(buf.get(p..body)?);
                        p = key(buf, body, prefix, out)?;
                        for _ in 1..m {
                            p = copy(buf, p, out)?;
                        }
                    }
                    _ => p = copy(buf, p, out)?,
                }
            }
            Some(p)
        }
    }
}

/// A consumer-group command's `-NOGROUP No such key 'KEY' or consumer group
/// 'G'…` or `-NOGROUP No such consumer group 'G' for key name 'KEY'`: the key as
/// the client named it (the group, not a key, as it is).
fn nogroup(buf: &[u8], prefix: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let end = buf.windows(2).position(|w| w == b"\r\n")? + 2;
    let mut text = buf[..end].to_vec();
    for head in [&b"key '"[..], b"key name '"] {
        text = replace_all(&text, &[head, prefix].concat(), head);
    }
    out.extend_from_slice(&text);
    Some(end)
}

/// `text` with every `from` replaced by `to`.
fn replace_all(text: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// One complete reply with the prefix removed from the keys it names. Anything
/// that does not parse as expected (an error reply) passes unchanged.
pub(super) fn unprefix(kind: Unprefix, prefix: &[u8], reply: Bytes) -> Bytes {
    let mut out = Vec::with_capacity(reply.len());
    match rewrite(kind, &reply, prefix, &mut out) {
        Some(end) => {
            out.extend_from_slice(reply.get(end..).unwrap_or_default());
            Bytes::from(out)
        }
        None => reply,
    }
}

/// `INFO`'s text from a cluster node as a standalone server's:
/// `cluster_enabled:0`, `redis_mode:standalone`.
fn standalone_info(info: &[u8]) -> Vec<u8> {
    let text = replace_all(info, b"\ncluster_enabled:1\r\n", b"\ncluster_enabled:0\r\n");
    replace_all(
        &text,
        b"\nredis_mode:cluster\r\n",
        b"\nredis_mode:standalone\r\n",
    )
}

/// A reply that came in parts: gathered whole, then rewritten. The receiver
/// gets it once the last part arrived (a broken connection: an error reply).
pub(super) fn gather(
    rewrite: Rewrite,
    first: Bytes,
    mut rest: mpsc::UnboundedReceiver<BatchReply>,
) -> oneshot::Receiver<Bytes> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut all = BytesMut::from(&first[..]);
        while let Some(part) = rest.recv().await {
            match part {
                Ok(b) => all.extend_from_slice(&b),
                Err(e) => {
                    let mut out = Vec::new();
                    reply::error(&mut out, &format!("ERR upstream reply lost: {e}"));
                    let _ = tx.send(Bytes::from(out));
                    return;
                }
            }
        }
        let _ = tx.send(rewrite.apply(all.freeze()));
    });
    rx
}

// ----------------------------------------------------------------------------
// DBSIZE, FLUSHDB, RANDOMKEY over SCAN
// ----------------------------------------------------------------------------

/// Runs `synth` for session `id` on `db` (RESP2 shared connection, whole
/// replies); the receiver gets the client's reply (empty if `silent`).
pub(super) fn run(
    synth: Synth,
    db: Arc<Database>,
    id: u64,
    resp3: bool,
    silent: bool,
) -> oneshot::Receiver<Bytes> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let prefix = db.config.upstream.key_prefix.clone().unwrap_or_default();
        let result = match synth {
            Synth::DbSize => db_size(&db, id, &prefix).await.map(|n| {
                let mut out = Vec::new();
                reply::integer(&mut out, n as i64);
                out
            }),
            Synth::FlushDb => flush_db(&db, id, &prefix)
                .await
                .map(|()| b"+OK\r\n".to_vec()),
            Synth::RandomKey => random_key(&db, id, &prefix).await.map(|k| {
                let mut out = Vec::new();
                match k {
                    Some(k) => reply::bulk(&mut out, &k),
                    None => reply::nil(&mut out, resp3),
                }
                out
            }),
        };
        let bytes = match result {
            Ok(b) => b,
            Err(text) => {
                let mut out = Vec::new();
                reply::error(&mut out, &text);
                out
            }
        };
        let _ = tx.send(if silent {
            Bytes::new()
        } else {
            Bytes::from(bytes)
        });
    });
    rx
}

/// One command on the database's shared connection, its reply whole.
pub(super) async fn call(
    db: &Database,
    id: u64,
    args: &[&[u8]],
    readonly: bool,
) -> Result<Bytes, String> {
    let mut req = Vec::new();
    encode_command(args, &mut req);
    stats::add(&db.stats.commands, 1);
    let (tx, rx) = oneshot::channel();
    db.send_shared(
        id,
        false,
        false,
        Batch {
            bytes: Bytes::from(req),
            count: 1,
            reply: tx,
            block: Block::No,
            retry: Retry::new(id, readonly, &db.config.upstream),
            divert: None,
            may_hold: false,
        },
    )
    .await;
    let answer = rx
        .await
        .map_err(|_| format!("ERR database {}: the reply was lost", db.label()))?;
    let first = answer
        .reply
        .map_err(|e| error_text(db, &e, answer.attempts))?;
    let Some(mut rest) = answer.rest else {
        return Ok(first);
    };
    let mut all = BytesMut::from(&first[..]);
    while let Some(part) = rest.recv().await {
        all.extend_from_slice(&part.map_err(|e| error_text(db, &e, 1))?);
    }
    Ok(all.freeze())
}

/// The bulk string at `pos` and where it ends.
pub(super) fn bulk_at(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let (t, n, body) = header(buf, pos)?;
    if t != b'$' || n < 0 {
        return None;
    }
    let end = body.checked_add(n as usize)?;
    Some((buf.get(body..end)?, end + 2))
}

/// An error reply's text, as `Err`.
fn check(reply: &[u8]) -> Result<(), String> {
    match reply.first() {
        Some(b'-') => Err(String::from_utf8_lossy(&reply[1..]).trim_end().to_string()),
        _ => Ok(()),
    }
}

/// One `SCAN cursor MATCH prefix* COUNT n`: the next cursor and the keys.
async fn scan_once(
    db: &Database,
    id: u64,
    cursor: &[u8],
    pattern: &[u8],
) -> Result<(Vec<u8>, Vec<Vec<u8>>), String> {
    let reply = call(
        db,
        id,
        &[
            b"SCAN",
            cursor,
            b"MATCH",
            pattern,
            b"COUNT",
            SCAN_COUNT.as_bytes(),
        ],
        true,
    )
    .await?;
    check(&reply)?;
    // `[cursor, [key, …]]` (RESP2: the shared connection used here speaks it).
    let parsed = match value::decode(&reply, 0) {
        Ok(Some((Value::Array(Some(items)), _))) => match <[Value; 2]>::try_from(items) {
            Ok([Value::Bulk(Some(next)), Value::Array(Some(keys))]) => keys
                .into_iter()
                .map(|k| match k {
                    Value::Bulk(Some(k)) => Some(k),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .map(|keys| (next, keys)),
            _ => None,
        },
        _ => None,
    };
    parsed.ok_or_else(|| "ERR unexpected SCAN reply from the upstream".to_string())
}

/// What [`scan_all`] does with each batch of keys.
enum Each<'a> {
    /// Counts them.
    Count(&'a mut u64),
    /// Unlinks them.
    Unlink,
}

/// Every batch of keys under `prefix`, one SCAN at a time, to `each`.
async fn scan_all(db: &Database, id: u64, prefix: &[u8], each: Each<'_>) -> Result<(), String> {
    let mut pattern = glob_escape(prefix);
    pattern.push(b'*');
    let mut cursor = b"0".to_vec();
    let mut each = each;
    loop {
        let (next, keys) = scan_once(db, id, &cursor, &pattern).await?;
        match &mut each {
            Each::Count(n) => **n += keys.len() as u64,
            Each::Unlink if keys.is_empty() => {}
            Each::Unlink => {
                let mut args: Vec<&[u8]> = Vec::with_capacity(keys.len() + 1);
                args.push(b"UNLINK");
                args.extend(keys.iter().map(Vec::as_slice));
                check(&call(db, id, &args, false).await?)?;
            }
        }
        if next == b"0" {
            return Ok(());
        }
        cursor = next;
    }
}

/// DBSIZE: the keys SCAN finds under the prefix. Not atomic: keys written or
/// deleted meanwhile may or may not be counted, and a key SCAN returns twice
/// (while Redis resizes its table) is counted twice.
async fn db_size(db: &Database, id: u64, prefix: &[u8]) -> Result<u64, String> {
    let mut n = 0;
    scan_all(db, id, prefix, Each::Count(&mut n)).await?;
    Ok(n)
}

/// FLUSHDB: every key SCAN finds under the prefix, unlinked batch by batch. Not
/// atomic: a key written meanwhile may survive.
async fn flush_db(db: &Database, id: u64, prefix: &[u8]) -> Result<(), String> {
    scan_all(db, id, prefix, Each::Unlink).await
}

/// RANDOMKEY: Redis's RANDOMKEY up to [`RANDOM_TRIES`] times until it names a
/// key under the prefix; then the first non-empty batch of `SCAN MATCH prefix*`,
/// one of its keys at random. Uniform only while the prefix holds most of the
/// upstream db; the fallback favours keys early in SCAN order. `None`: no key
/// under the prefix.
async fn random_key(db: &Database, id: u64, prefix: &[u8]) -> Result<Option<Vec<u8>>, String> {
    for _ in 0..RANDOM_TRIES {
        let reply = call(db, id, &[b"RANDOMKEY"], true).await?;
        check(&reply)?;
        match bulk_at(&reply, 0) {
            None => return Ok(None),
            Some((k, _)) => {
                if let Some(rest) = k.strip_prefix(prefix) {
                    return Ok(Some(rest.to_vec()));
                }
            }
        }
    }
    let mut pattern = glob_escape(prefix);
    pattern.push(b'*');
    let mut cursor = b"0".to_vec();
    loop {
        let (next, keys) = scan_once(db, id, &cursor, &pattern).await?;
        if !keys.is_empty() {
            let k = &keys[fastrand::usize(..keys.len())];
            return Ok(Some(k.get(prefix.len()..).unwrap_or_default().to_vec()));
        }
        if next == b"0" {
            return Ok(None);
        }
        cursor = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(args: &[&str]) -> Plan {
        let cmd = Descriptor::of(args);
        plan(b"kb:", &cmd, args, Place::Plain)
    }

    #[test]
    fn unknown_commands_get_redis_words_only_when_the_upstream_cannot_have_them() {
        let upstream = crate::endpoint::Endpoint::new();
        let learn = |version: &str, modules: &[u8]| {
            upstream.learn(crate::endpoint::Identity {
                server: b"redis".to_vec(),
                version: version.as_bytes().to_vec(),
                role: b"master".to_vec(),
                modules: [modules.to_vec(), modules.to_vec()],
            })
        };
        let said = |args: &[&str]| unknown(&Descriptor::of(args), args, &upstream);
        // Not known yet: a module or a newer Redis may have it.
        assert_eq!(said(&["NOSUCH", "k"]), None);
        learn(table::REDIS_VERSION, b"*0\r\n");
        assert_eq!(
            said(&["NOSUCH", "k", "v"]).as_deref(),
            Some("ERR unknown command 'NOSUCH', with args beginning with: 'k' 'v' ")
        );
        assert_eq!(
            said(&["object", "nosuch", "k"]).as_deref(),
            Some("ERR unknown subcommand 'nosuch'. Try OBJECT HELP.")
        );
        // Known commands (refused for other reasons) are not unknown.
        assert_eq!(said(&["FLUSHALL"]), None);
        assert_eq!(said(&["MOVE", "k", "2"]), None);
        learn("6.2.14", b"*0\r\n");
        assert!(said(&["NOSUCH"]).is_some(), "an older Redis has no more");
        learn("7.2.4", b"*0\r\n");
        assert_eq!(said(&["NOSUCH"]), None, "a newer Redis may have it");
        learn(
            table::REDIS_VERSION,
            b"*1\r\n*2\r\n$4\r\nname\r\n$2\r\nft\r\n",
        );
        assert_eq!(said(&["FT.SEARCH", "i", "q"]), None, "a module may have it");
    }

    fn sent(args: &[&str]) -> Vec<String> {
        match plan_of(args) {
            Plan::Forward { bytes: Some(b), .. } => {
                let mut out = Vec::new();
                let mut p = 0;
                let (_, n, body) = header(&b, p).expect("array");
                p = body;
                for _ in 0..n {
                    let (a, end) = bulk_at(&b, p).expect("bulk");
                    out.push(String::from_utf8_lossy(a).into_owned());
                    p = end;
                }
                out
            }
            Plan::Forward { bytes: None, .. } => args.iter().map(|s| s.to_string()).collect(),
            Plan::Synth(s) => vec![format!("{s:?}")],
            Plan::Refuse(t) => vec![t],
        }
    }

    #[test]
    fn keys_are_prefixed() {
        assert_eq!(sent(&["GET", "a"]), ["GET", "kb:a"]);
        assert_eq!(
            sent(&["MSET", "a", "1", "b", "2"]),
            ["MSET", "kb:a", "1", "kb:b", "2"]
        );
        assert_eq!(
            sent(&["EVAL", "s", "1", "a", "x"]),
            ["EVAL", "s", "1", "kb:a", "x"]
        );
        assert_eq!(
            sent(&["SORT", "l", "BY", "nosort", "GET", "#", "GET", "o_*"]),
            ["SORT", "kb:l", "BY", "nosort", "GET", "#", "GET", "kb:o_*"]
        );
        assert_eq!(sent(&["GET", "{u1}:a"]), ["GET", "kb:{u1}:a"]);
        assert_eq!(sent(&["PING"]), ["PING"]);
        assert_eq!(sent(&["SPUBLISH", "ch", "m"]), ["SPUBLISH", "ch", "m"]);
        assert_eq!(sent(&["KEYS", "*"]), ["KEYS", "kb:*"]);
        assert_eq!(
            sent(&["SCAN", "0", "COUNT", "10"]),
            ["SCAN", "0", "COUNT", "10", "MATCH", "kb:*"]
        );
        assert_eq!(
            sent(&["SCAN", "0", "match", "a*"]),
            ["SCAN", "0", "match", "kb:a*"]
        );
    }

    #[test]
    fn refusals_and_synthesized() {
        assert_eq!(
            sent(&["FLUSHALL"]),
            [
                "ERR 'FLUSHALL' is not supported on a database with key_prefix (it would delete \
              the keys of every database sharing the upstream; use FLUSHDB)"
            ]
        );
        assert_eq!(
            sent(&["nosuch", "k"]),
            [
                "ERR 'NOSUCH' is not supported on a database with key_prefix (its keys cannot be \
              located)"
            ]
        );
        assert_eq!(sent(&["DBSIZE"]), ["DbSize"]);
        assert_eq!(sent(&["flushdb", "async"]), ["FlushDb"]);
        assert_eq!(sent(&["RANDOMKEY"]), ["RandomKey"]);
        assert!(sent(&["SWAPDB", "0", "1"])[0].contains("'SWAPDB'"));
        let cmd = Descriptor::of(&["KEYS", "*"][..]);
        assert!(matches!(
            plan(b"kb:", &cmd, &["KEYS", "*"][..], Place::Subscribed),
            Plan::Refuse(_)
        ));
        // Inside MULTI: rewritten in EXEC's reply; what runs over SCAN refused.
        assert!(matches!(
            plan(b"kb:", &cmd, &["KEYS", "*"][..], Place::InMulti),
            Plan::Forward {
                reply: Some(Unprefix::List),
                ..
            }
        ));
        let cmd = Descriptor::of(&["DBSIZE"][..]);
        assert!(matches!(
            plan(b"kb:", &cmd, &["DBSIZE"][..], Place::InMulti),
            Plan::Refuse(_)
        ));
    }

    #[test]
    fn keyspace_notifications() {
        assert_eq!(
            sent(&["SUBSCRIBE", "__keyspace@0__:k", "news"]),
            ["SUBSCRIBE", "__keyspace@0__:kb:k", "news"]
        );
        let cmd = Descriptor::of(&["PSUBSCRIBE", "__keyspace@*__:*"][..]);
        let Plan::Forward { bytes: Some(b), .. } = plan(
            b"k*:",
            &cmd,
            &["PSUBSCRIBE", "__keyspace@*__:*"][..],
            Place::Plain,
        ) else {
            panic!("rewritten");
        };
        assert!(b.ends_with(b"$20\r\n__keyspace@*__:k\\*:*\r\n"), "{b:?}");
        let frame = |parts: &[&str]| {
            let mut out = Vec::new();
            reply::array_header(&mut out, parts.len());
            for p in parts {
                match p.strip_prefix(':') {
                    Some(n) => reply::integer(&mut out, n.parse().expect("count")),
                    None => reply::bulk(&mut out, p.as_bytes()),
                }
            }
            Bytes::from(out)
        };
        let f = |parts: &[&str]| pubsub_frame(b"kb:", frame(parts));
        assert_eq!(
            f(&["message", "__keyspace@0__:kb:k", "set"]),
            Some(frame(&["message", "__keyspace@0__:k", "set"]))
        );
        assert_eq!(f(&["message", "__keyspace@0__:other:k", "set"]), None);
        assert_eq!(
            f(&[
                "pmessage",
                "__keyspace@*__:kb:*",
                "__keyspace@0__:kb:k",
                "del"
            ]),
            Some(frame(&[
                "pmessage",
                "__keyspace@*__:*",
                "__keyspace@0__:k",
                "del"
            ]))
        );
        assert_eq!(
            f(&["pmessage", "*", "__keyevent@0__:set", "kb:k"]),
            Some(frame(&["pmessage", "*", "__keyevent@0__:set", "k"]))
        );
        assert_eq!(f(&["pmessage", "*", "__keyevent@0__:set", "x:k"]), None);
        assert_eq!(
            f(&["psubscribe", "__keyspace@*__:kb:*", ":1"]),
            Some(frame(&["psubscribe", "__keyspace@*__:*", ":1"]))
        );
        assert_eq!(
            f(&["message", "news", "hello"]),
            Some(frame(&["message", "news", "hello"]))
        );
    }

    #[test]
    fn hostile_lengths_do_not_panic() {
        for junk in [
            &b"$9223372036854775807\r\nab\r\n"[..],
            b"*9223372036854775807\r\n$1\r\na\r\n",
            b"%4611686018427387904\r\n",
            b"*2\r\n$18446744073709551615\r\n",
            b"*1\r\n",
            b"",
        ] {
            for kind in [
                Unprefix::List,
                Unprefix::Scan,
                Unprefix::FirstKey,
                Unprefix::Streams,
                Unprefix::Slowlog,
            ] {
                let _ = unprefix(kind, b"kb:", Bytes::copy_from_slice(junk));
            }
            let frame = pubsub_frame(b"kb:", Bytes::copy_from_slice(junk));
            assert_eq!(frame.as_deref(), Some(junk), "passed on as it is");
        }
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        assert_eq!(glob_escape(b"a*b?[c]\\:"), b"a\\*b\\?\\[c\\]\\\\:");
    }

    /// `SLOWLOG GET`: the logged command's keys lose the prefix (by the
    /// command table: `MSET`'s keys, not its values; `COPY`'s two keys), other
    /// prefixes and non-key arguments stay; an entry's other fields pass.
    #[test]
    fn slowlog_entries_name_keys_without_the_prefix() {
        let entry = |id: u8, args: &[&[u8]]| {
            let mut e = Vec::new();
            reply::array_header(&mut e, 6);
            e.extend_from_slice(format!(":{id}\r\n:1700000000\r\n:15\r\n").as_bytes());
            reply::array_header(&mut e, args.len());
            for a in args {
                reply::bulk(&mut e, a);
            }
            reply::bulk(&mut e, b"127.0.0.1:5000");
            reply::bulk(&mut e, b"");
            e
        };
        let log = |entries: &[Vec<u8>]| {
            let mut r = Vec::new();
            reply::array_header(&mut r, entries.len());
            entries.iter().for_each(|e| r.extend_from_slice(e));
            r
        };
        let stored = log(&[
            entry(3, &[b"MSET", b"kb:a", b"kb:1", b"kb:b", b"2"]),
            entry(2, &[b"COPY", b"kb:x", b"kb:y"]),
            entry(1, &[b"GET", b"other:k"]),
            entry(0, &[b"PUBLISH", b"kb:chan", b"kb:m"]),
        ]);
        let shown = log(&[
            entry(3, &[b"MSET", b"a", b"kb:1", b"b", b"2"]),
            entry(2, &[b"COPY", b"x", b"y"]),
            entry(1, &[b"GET", b"other:k"]),
            entry(0, &[b"PUBLISH", b"kb:chan", b"kb:m"]),
        ]);
        let un = |r: &[u8]| unprefix(Unprefix::Slowlog, b"kb:", Bytes::copy_from_slice(r));
        assert_eq!(
            String::from_utf8_lossy(&un(&stored)),
            String::from_utf8_lossy(&shown)
        );
        assert_eq!(&un(b"*0\r\n")[..], b"*0\r\n");
        assert_eq!(&un(b"-ERR x\r\n")[..], b"-ERR x\r\n");
    }

    #[test]
    fn replies_lose_the_prefix() {
        let un = |k, r: &[u8]| unprefix(k, b"kb:", Bytes::copy_from_slice(r));
        assert_eq!(
            &un(Unprefix::List, b"*2\r\n$4\r\nkb:a\r\n$5\r\nkb:bc\r\n")[..],
            b"*2\r\n$1\r\na\r\n$2\r\nbc\r\n"
        );
        assert_eq!(
            &un(Unprefix::Scan, b"*2\r\n$2\r\n17\r\n*1\r\n$4\r\nkb:a\r\n")[..],
            b"*2\r\n$2\r\n17\r\n*1\r\n$1\r\na\r\n"
        );
        assert_eq!(
            &un(Unprefix::FirstKey, b"*2\r\n$4\r\nkb:l\r\n$4\r\nkb:v\r\n")[..],
            b"*2\r\n$1\r\nl\r\n$4\r\nkb:v\r\n"
        );
        assert_eq!(&un(Unprefix::FirstKey, b"*-1\r\n")[..], b"*-1\r\n");
        assert_eq!(&un(Unprefix::FirstKey, b"_\r\n")[..], b"_\r\n");
        assert_eq!(&un(Unprefix::List, b"-ERR x\r\n")[..], b"-ERR x\r\n");
        let xread2 =
            b"*1\r\n*2\r\n$4\r\nkb:s\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
        assert_eq!(
            &un(Unprefix::Streams, xread2)[..],
            &b"*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"[..]
        );
        let xread3 = b"%1\r\n$4\r\nkb:s\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n";
        assert_eq!(
            &un(Unprefix::Streams, xread3)[..],
            &b"%1\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"[..]
        );
        assert_eq!(
            &un(
                Unprefix::Streams,
                b"-NOGROUP No such key 'kb:s' or consumer group 'kb:g' in XREADGROUP with GROUP option\r\n"
            )[..],
            b"-NOGROUP No such key 's' or consumer group 'kb:g' in XREADGROUP with GROUP option\r\n"
        );
        assert_eq!(
            &un(
                Unprefix::Nogroup,
                b"-NOGROUP No such consumer group 'kb:g' for key name 'kb:s'\r\n"
            )[..],
            b"-NOGROUP No such consumer group 'kb:g' for key name 's'\r\n"
        );
        assert_eq!(&un(Unprefix::Nogroup, b":1\r\n")[..], b":1\r\n");
    }

    #[test]
    fn exec_elements_lose_the_prefix_of_their_own_command() {
        let pfx = Bytes::from_static(b"kb:");
        let rw = Rewrite::Exec(vec![
            (1, Unprefix::List, pfx.clone()),
            (2, Unprefix::FirstKey, Bytes::from_static(b"kc:")),
        ]);
        let reply = b"*3\r\n$4\r\nkb:a\r\n*1\r\n$4\r\nkb:a\r\n*2\r\n$4\r\nkc:l\r\n$1\r\nv\r\n";
        assert_eq!(
            &rw.apply(Bytes::from_static(reply))[..],
            &b"*3\r\n$4\r\nkb:a\r\n*1\r\n$1\r\na\r\n*2\r\n$1\r\nl\r\n$1\r\nv\r\n"[..]
        );
        for passes in [&b"*-1\r\n"[..], b"_\r\n", b"-EXECABORT x\r\n"] {
            assert_eq!(&rw.apply(Bytes::copy_from_slice(passes))[..], passes);
        }
    }
}
