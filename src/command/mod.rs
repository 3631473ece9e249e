//! Command classification: what the proxy does with each command.
//!
//! The table is a byte-literal `match` over the upper-cased command name. Most
//! commands are stateless and are pipelined onto a shared upstream connection. A few
//! are answered by the proxy itself because they concern the client's own connection
//! (SELECT, AUTH, HELLO, CLIENT SETNAME …). Commands that would change the state of
//! an upstream connection (transactions, blocking pops, pub/sub, MONITOR …) must not
//! run on a shared connection: the session gives them connections of their own.

use std::sync::OnceLock;

pub mod keys;
pub mod table;

/// What the session does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stateless: forward on a shared, multiplexed upstream connection.
    Forward,
    /// `SELECT n`: switch the session's database.
    Select,
    /// `PROXY …`: the proxy's admin command.
    Proxy,
    /// `AUTH [user] password`: checked against the proxy's client password.
    Auth,
    /// `HELLO [protover …]`: protocol negotiation, answered by the proxy.
    Hello,
    /// `CLIENT …`: per-connection settings kept by the proxy.
    Client,
    /// `QUIT`: reply `+OK` and close.
    Quit,
    /// `RESET`: reset the session's state.
    Reset,
    /// Cross-database commands (MOVE, COPY … DB, SWAPDB) whose db arguments name
    /// client-facing indexes.
    CrossDb,
    /// Would change the state of a shared upstream connection; refused with the
    /// family named, until it runs on a dedicated connection.
    Stateful(Family),
    /// `POST` or `Host:` as a command: an HTTP request sent to the proxy (a web
    /// page attempting cross-protocol scripting). As Redis does, the client is
    /// closed and nothing after it runs.
    Attack,
}

/// Families of connection-stateful commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// MULTI / EXEC / DISCARD / WATCH / UNWATCH.
    Transaction,
    /// BLPOP and friends, XREAD … BLOCK, WAIT.
    Blocking,
    /// SUBSCRIBE / PSUBSCRIBE / SSUBSCRIBE and their UNSUBSCRIBEs.
    PubSub,
    /// MONITOR: streams every command the server runs.
    Monitor,
    /// SYNC, PSYNC, REPLCONF: would turn the connection into a replica link.
    Replication,
}

impl Family {
    /// Human-readable name used in error replies.
    pub fn describe(self) -> &'static str {
        match self {
            Family::Transaction => "transactions (MULTI/EXEC/WATCH)",
            Family::Blocking => "blocking commands",
            Family::PubSub => "pub/sub",
            Family::Monitor => "MONITOR",
            Family::Replication => "replication commands",
        }
    }
}

/// Longest command name we classify; longer names are unknown (forwarded).
const MAX_NAME: usize = 32;

/// Upper-cases `name` into `buf` and returns it, or `None` if it is too long.
#[inline]
pub fn upper<'a>(name: &[u8], buf: &'a mut [u8; MAX_NAME]) -> Option<&'a [u8]> {
    if name.len() > MAX_NAME {
        return None;
    }
    let dst = &mut buf[..name.len()];
    for (d, s) in dst.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    Some(dst)
}

/// A request's arguments, wherever they are stored (`arg(0)` is the command name).
pub trait ArgList {
    /// Number of arguments, the name included.
    fn count(&self) -> usize;
    /// Argument `i`; empty if out of range.
    fn arg(&self, i: usize) -> &[u8];
    /// Whether any argument from `from` on equals `word` (ASCII case-insensitive).
    fn has_word(&self, from: usize, word: &[u8]) -> bool {
        (from..self.count()).any(|i| self.arg(i).eq_ignore_ascii_case(word))
    }
}

impl<A: AsRef<[u8]>> ArgList for [A] {
    fn count(&self) -> usize {
        self.len()
    }
    fn arg(&self, i: usize) -> &[u8] {
        self.get(i).map(AsRef::as_ref).unwrap_or(b"")
    }
}

impl<A: AsRef<[u8]>> ArgList for Vec<A> {
    fn count(&self) -> usize {
        self.len()
    }
    fn arg(&self, i: usize) -> &[u8] {
        self[..].arg(i)
    }
}

/// Arguments stored as ranges into a request buffer (what the parser produces).
#[derive(Debug, Clone, Copy)]
pub struct Ranged<'a> {
    /// The buffer the ranges point into.
    pub buf: &'a [u8],
    /// One range per argument.
    pub ranges: &'a [std::ops::Range<usize>],
}

impl ArgList for Ranged<'_> {
    fn count(&self) -> usize {
        self.ranges.len()
    }
    fn arg(&self, i: usize) -> &[u8] {
        self.ranges
            .get(i)
            .and_then(|r| self.buf.get(r.clone()))
            .unwrap_or(b"")
    }
}

/// Calls `f` with each request of a batch a session already checked (the bytes
/// of that request, and its arguments) until it returns false; empty inline lines
/// are skipped. Whether every request was seen (none refused by `f`, all of
/// `bytes` parsed). Parsed with no size limits: the session applied them.
pub fn each_request(
    bytes: &bytes::Bytes,
    mut f: impl FnMut(bytes::Bytes, &dyn ArgList) -> bool,
) -> bool {
    use crate::protocol::request::{self, RequestKind};
    static UNLIMITED: OnceLock<crate::config::Limits> = OnceLock::new();
    let limits = UNLIMITED.get_or_init(|| crate::config::Limits {
        max_args: usize::MAX,
        max_bulk_len: usize::MAX,
        max_inline_len: usize::MAX,
        ..crate::config::Limits::default()
    });
    let mut ranges = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Ok(Some(req)) = request::parse(&bytes[at..], limits, &mut ranges) else {
            return false;
        };
        let this = bytes.slice(at..at + req.len);
        let go = match &req.kind {
            RequestKind::Empty => true,
            RequestKind::Multibulk => f(
                this,
                &Ranged {
                    buf: &bytes[at..],
                    ranges: &ranges,
                },
            ),
            RequestKind::Inline(a) => f(this, a),
        };
        if !go {
            return false;
        }
        at += req.len;
    }
    true
}

/// What a transaction-family command does to a connection's MULTI/WATCH state,
/// as Redis (7.0) does it. A transaction command with a wrong number of
/// arguments is refused before it runs, like any other: it is [`TxOp::None`]
/// (inside MULTI the refusal aborts the transaction at EXEC), except EXEC,
/// which Redis then takes for the end of the transaction: [`TxOp::Abort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxOp {
    /// Not a transaction command (or one refused for its arity).
    None,
    /// MULTI.
    Multi,
    /// EXEC or DISCARD.
    End,
    /// WATCH.
    Watch,
    /// UNWATCH.
    Unwatch,
    /// EXEC with arguments: `-EXECABORT`, in MULTI or not; the transaction, if
    /// any, is discarded and the WATCH ended.
    Abort,
}

impl TxOp {
    /// Whether a connection is inside MULTI after a request with this role
    /// (`in_multi`: before it). A nested MULTI is refused.
    #[inline]
    pub fn in_multi_after(self, in_multi: bool) -> bool {
        match self {
            TxOp::Multi => true,
            TxOp::End | TxOp::Abort => false,
            _ => in_multi,
        }
    }

    /// Whether a request with this role ends a WATCH in force (`in_multi`: sent
    /// inside MULTI): EXEC or DISCARD ending a MULTI, UNWATCH outside MULTI
    /// (inside, it is queued, and EXEC ends the watch anyway), and an EXEC
    /// refused for its arity. EXEC or DISCARD without MULTI is refused, and the
    /// keys stay watched. The one rule every path that tracks a WATCH follows.
    #[inline]
    pub fn ends_watch(self, in_multi: bool) -> bool {
        match self {
            TxOp::End => in_multi,
            TxOp::Abort => true,
            TxOp::Unwatch => !in_multi,
            _ => false,
        }
    }
}

/// A request classified once: what the session decides from. Later code reads
/// these fields, never the request's bytes again.
#[derive(Debug, Clone, Copy)]
pub struct Descriptor {
    /// What the session does with it.
    pub route: Route,
    /// Its command-table entry (its subcommand's for containers); `None` for
    /// commands Redis does not have (PROXY, or unknown ones).
    pub info: Option<&'static table::CommandInfo>,
    /// Its effect on MULTI/WATCH state.
    pub tx: TxOp,
    /// How long a blocking command may block.
    pub block: Block,
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE or MONITOR: starts a stream (as opposed to
    /// an UNSUBSCRIBE-family command ending one).
    pub subscribes: bool,
}

impl Descriptor {
    /// Classifies a request from its arguments (`arg(0)` is the name).
    pub fn of<L: ArgList + ?Sized>(args: &L) -> Descriptor {
        let (route, info) = identify(args);
        let name = info.map_or("", |i| i.name);
        let tx = match (route, info) {
            (Route::Stateful(Family::Transaction), Some(i)) => {
                match (i.name, arity_allows(i.arity, args.count())) {
                    ("multi", true) => TxOp::Multi,
                    ("exec" | "discard", true) => TxOp::End,
                    ("exec", false) => TxOp::Abort,
                    ("watch", true) => TxOp::Watch,
                    ("unwatch", true) => TxOp::Unwatch,
                    _ => TxOp::None,
                }
            }
            _ => TxOp::None,
        };
        let block = if route == Route::Stateful(Family::Blocking) {
            block_time(args)
        } else {
            Block::No
        };
        let subscribes = match route {
            Route::Stateful(Family::Monitor) => true,
            Route::Stateful(Family::PubSub) => !name.contains("unsub"),
            _ => false,
        };
        Descriptor {
            route,
            info,
            tx,
            block,
            subscribes,
        }
    }

    /// Its index in the command table (`table::COUNT` for unknown commands).
    #[inline]
    pub fn index(&self) -> u16 {
        self.info.map_or(table::COUNT as u16, |i| i.index)
    }

    /// Read-only by Redis's command flags (safe to run again).
    #[inline]
    pub fn readonly(&self) -> bool {
        self.info.is_some_and(|i| i.is_readonly())
    }

    /// EXEC of the right arity ([`TxOp::End`]; one with arguments is
    /// [`TxOp::Abort`]).
    #[inline]
    pub fn is_exec(&self) -> bool {
        self.tx == TxOp::End && self.info.is_some_and(|i| i.name == "exec")
    }

    /// A forwarded command that Redis holds back while writes are paused (`CLIENT
    /// PAUSE … WRITE`): its `write` or `may-replicate` flag (EVAL, PUBLISH,
    /// PFCOUNT …), as Redis's `processCommand` decides.
    #[inline]
    pub fn pausable(&self) -> bool {
        self.route == Route::Forward && self.info.is_some_and(pausable)
    }

    /// Runs on Redis even while it is busy with a script (SCRIPT KILL, FUNCTION
    /// KILL, FUNCTION STATS, SHUTDOWN: Redis's `allow-busy` flag on a forwarded
    /// command): the proxy sends it out of band.
    #[inline]
    pub fn runs_while_busy(&self) -> bool {
        self.route == Route::Forward && self.info.is_some_and(|i| i.has(table::ALLOW_BUSY))
    }

    /// `SCRIPT KILL` or `FUNCTION KILL`: stops the script running on the server
    /// it reaches (on a cluster, whichever node runs it).
    #[inline]
    pub fn kills_script(&self) -> bool {
        self.info
            .is_some_and(|i| matches!(i.name, "script|kill" | "function|kill"))
    }
}

/// Classifies a command from its arguments (`arg(0)` is the name).
pub fn classify<L: ArgList + ?Sized>(args: &L) -> Route {
    identify(args).0
}

/// Classifies a command and finds its command-table entry (its subcommand's for
/// containers such as `CLIENT LIST`), upper-casing the name once.
pub fn identify<L: ArgList + ?Sized>(args: &L) -> (Route, Option<&'static table::CommandInfo>) {
    let mut buf = [0u8; MAX_NAME];
    let Some(name) = upper(args.arg(0), &mut buf) else {
        return (Route::Forward, None);
    };
    let Some(parent) = table::lookup(name) else {
        // Not a Redis command (PROXY, or unknown: forwarded for Redis to refuse).
        return (classify_upper(name, args), None);
    };
    let route = match routes().get(parent.index as usize) {
        Some(Some(route)) => *route,
        _ => classify_upper(name, args),
    };
    let mut info = parent;
    if parent.has(table::CONTAINER) && args.count() > 1 {
        let mut sub_buf = [0u8; MAX_NAME];
        if let Some(sub) = upper(args.arg(1), &mut sub_buf) {
            info = table::lookup_sub(name, sub).unwrap_or(parent);
        }
    }
    (route, Some(info))
}

/// Commands whose route depends on their arguments (`COPY … DB`, `XREAD … BLOCK`).
const ARG_DEPENDENT: [&[u8]; 3] = [b"COPY", b"XREAD", b"XREADGROUP"];

/// The route of every top-level command of the table, from its name alone (`None`
/// for [`ARG_DEPENDENT`] ones), computed once: the hot path indexes it instead of
/// matching the name again.
fn routes() -> &'static [Option<Route>] {
    static ROUTES: OnceLock<Vec<Option<Route>>> = OnceLock::new();
    ROUTES.get_or_init(|| {
        table::COMMANDS[..table::TOP_LEVEL]
            .iter()
            .map(|c| {
                let name = c.name.to_ascii_uppercase();
                let none: [&[u8]; 0] = [];
                (!ARG_DEPENDENT.contains(&name.as_bytes()))
                    .then(|| classify_upper(name.as_bytes(), &none[..]))
            })
            .collect()
    })
}

/// [`classify`] for an upper-cased name.
fn classify_upper<L: ArgList + ?Sized>(name: &[u8], args: &L) -> Route {
    match name {
        b"SELECT" => Route::Select,
        b"PROXY" => Route::Proxy,
        b"AUTH" => Route::Auth,
        b"HELLO" => Route::Hello,
        b"CLIENT" => Route::Client,
        b"QUIT" => Route::Quit,
        b"RESET" => Route::Reset,
        b"MOVE" | b"SWAPDB" => Route::CrossDb,
        b"COPY" if args.has_word(3, b"DB") => Route::CrossDb,
        b"MULTI" | b"EXEC" | b"DISCARD" | b"WATCH" | b"UNWATCH" => {
            Route::Stateful(Family::Transaction)
        }
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BZPOPMIN" | b"BZPOPMAX" | b"BLMPOP"
        | b"BZMPOP" | b"WAIT" | b"WAITAOF" => Route::Stateful(Family::Blocking),
        b"XREAD" | b"XREADGROUP" if args.has_word(1, b"BLOCK") => Route::Stateful(Family::Blocking),
        b"SUBSCRIBE" | b"PSUBSCRIBE" | b"SSUBSCRIBE" | b"UNSUBSCRIBE" | b"PUNSUBSCRIBE"
        | b"SUNSUBSCRIBE" => Route::Stateful(Family::PubSub),
        b"MONITOR" => Route::Stateful(Family::Monitor),
        b"SYNC" | b"PSYNC" | b"REPLCONF" => Route::Stateful(Family::Replication),
        b"POST" | b"HOST:" => Route::Attack,
        _ => Route::Forward,
    }
}

/// What a standalone Redis answers to the commands of [`cluster_only`].
pub const CLUSTER_DISABLED: &str = "ERR This instance has cluster support disabled";

/// Whether a standalone Redis refuses this request with [`CLUSTER_DISABLED`]:
/// every `CLUSTER` subcommand, `READONLY`, `READWRITE` and `ASKING`, given as many
/// arguments (`argc`, the name included) as their arity allows (else the arity
/// error comes first; an unknown `CLUSTER` subcommand gets its own error).
pub fn cluster_only(info: &table::CommandInfo, argc: usize) -> bool {
    let named = info.name.starts_with("cluster|")
        || matches!(info.name, "readonly" | "readwrite" | "asking");
    named && arity_allows(info.arity, argc)
}

/// Whether `argc` arguments (the name included) satisfy a Redis arity: `n` exactly
/// `n`, `-n` at least `n`.
pub fn arity_allows(arity: i16, argc: usize) -> bool {
    let n = usize::from(arity.unsigned_abs());
    if arity < 0 {
        argc >= n
    } else {
        argc == n
    }
}

/// Held back by a `CLIENT PAUSE … WRITE`: Redis's `write` or `may-replicate` flag.
fn pausable(c: &table::CommandInfo) -> bool {
    c.has(table::WRITE) || c.has(table::MAY_REPLICATE)
}

/// Whether Redis may hold the command-table index `idx` back for long while it
/// answers other connections: what a `CLIENT PAUSE … WRITE` (also `FAILOVER`'s)
/// holds back, or a script (EVAL, EVALSHA, FCALL and their read-only forms: the
/// scripting commands with key arguments; others get `-BUSY` while it runs).
#[inline]
pub fn may_be_held(idx: u16) -> bool {
    table::COMMANDS
        .get(usize::from(idx))
        .is_some_and(|c| pausable(c) || c.has(table::CAT_SCRIPTING | table::MOVABLE_KEYS))
}

/// Whether the command-table index `idx` is `PUBLISH` or `SPUBLISH`.
pub fn publishes(idx: u16) -> bool {
    matches!(table_name(usize::from(idx)), "publish" | "spublish")
}

/// The name of a command-table index (`other` for commands not in the table).
pub fn command_name(idx: usize) -> String {
    table::COMMANDS
        .get(idx)
        .map_or_else(|| "other".to_string(), |c| c.name.replace('|', "_"))
}

/// The name of a command-table index as Redis writes it (`config|get`; `other` for
/// commands not in the table).
pub fn table_name(idx: usize) -> &'static str {
    table::COMMANDS.get(idx).map_or("other", |c| c.name)
}

/// How long a blocking command may legitimately wait for its reply, beyond the
/// command timeout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Block {
    /// Not blocking: the command timeout applies.
    No,
    /// Blocks at most this long (its own timeout argument).
    For(std::time::Duration),
    /// Timeout 0: blocks until served; the proxy never cuts it.
    Forever,
}

/// The block time a blocking command asks for, from its timeout argument
/// (seconds for BLPOP & co, milliseconds for XREAD BLOCK, WAIT, WAITAOF).
pub fn block_time<L: ArgList + ?Sized>(args: &L) -> Block {
    let mut buf = [0u8; MAX_NAME];
    let Some(name) = upper(args.arg(0), &mut buf) else {
        return Block::No;
    };
    let n = args.count();
    let (arg, millis) = match name {
        b"BLPOP" | b"BRPOP" | b"BLMOVE" | b"BRPOPLPUSH" | b"BZPOPMIN" | b"BZPOPMAX" => {
            (args.arg(n.saturating_sub(1)), false)
        }
        b"BLMPOP" | b"BZMPOP" => (args.arg(1), false),
        b"WAIT" => (args.arg(2), true),
        b"WAITAOF" => (args.arg(3), true),
        b"XREAD" | b"XREADGROUP" => {
            match (1..n).find(|&i| args.arg(i).eq_ignore_ascii_case(b"BLOCK")) {
                Some(i) => (args.arg(i + 1), true),
                None => return Block::No,
            }
        }
        _ => return Block::No,
    };
    let Some(v) = std::str::from_utf8(arg)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
    else {
        // Redis will reject it at once.
        return Block::No;
    };
    if !v.is_finite() || v < 0.0 {
        return Block::No;
    }
    if v == 0.0 {
        return Block::Forever;
    }
    let secs = if millis { v / 1000.0 } else { v };
    Block::For(std::time::Duration::from_secs_f64(secs.min(1e9)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_and_arguments_matter() {
        assert_eq!(classify(&["get", "k"][..]), Route::Forward);
        assert_eq!(classify(&["select", "1"][..]), Route::Select);
        assert_eq!(classify(&["Proxy", "info"][..]), Route::Proxy);
        assert_eq!(
            classify(&["xread", "COUNT", "1", "STREAMS", "s", "0"][..]),
            Route::Forward
        );
        assert_eq!(
            classify(&["xread", "block", "0", "STREAMS", "s", "$"][..]),
            Route::Stateful(Family::Blocking)
        );
        assert_eq!(classify(&["COPY", "a", "b"][..]), Route::Forward);
        assert_eq!(classify(&["COPY", "a", "b", "db", "2"][..]), Route::CrossDb);
        assert_eq!(
            classify(&["multi"][..]),
            Route::Stateful(Family::Transaction)
        );
        assert_eq!(
            classify(&["psubscribe", "x"][..]),
            Route::Stateful(Family::PubSub)
        );
        use std::time::Duration;
        assert_eq!(
            block_time(&["blpop", "a", "b", "2.5"][..]),
            Block::For(Duration::from_millis(2500))
        );
        assert_eq!(block_time(&["BLPOP", "a", "0"][..]), Block::Forever);
        assert_eq!(
            block_time(&["BLMPOP", "3", "1", "k", "LEFT"][..]),
            Block::For(Duration::from_secs(3))
        );
        assert_eq!(
            block_time(&["XREAD", "BLOCK", "1500", "STREAMS", "s", "$"][..]),
            Block::For(Duration::from_millis(1500))
        );
        assert_eq!(block_time(&["WAIT", "1", "0"][..]), Block::Forever);
        assert_eq!(block_time(&["GET", "k"][..]), Block::No);
        assert_eq!(block_time(&["BLPOP", "a", "x"][..]), Block::No);
        let long = "X".repeat(100);
        assert_eq!(classify(&[long.as_str()][..]), Route::Forward);
    }
}

#[cfg(test)]
mod identify_tests {
    use super::*;

    #[test]
    fn pausable_and_held_commands_are_those_redis_holds_back() {
        // (args, held back by CLIENT PAUSE WRITE, may hold a connection for long)
        let cases: [(&[&str], bool, bool); 16] = [
            (&["SET", "k", "v"], true, true),
            (&["DEL", "k"], true, true),
            (&["eval", "return 1", "0"], true, true),
            (&["EVALSHA", "x", "0"], true, true),
            (&["FCALL", "f", "0"], true, true),
            (&["PUBLISH", "c", "m"], true, true),
            (&["PFCOUNT", "h"], true, true),
            (&["EVAL_RO", "x", "0"], false, true),
            (&["EVALSHA_RO", "x", "0"], false, true),
            (&["fcall_ro", "x", "0"], false, true),
            (&["GET", "k"], false, false),
            (&["PING"], false, false),
            (&["SCRIPT", "LOAD", "x"], false, false),
            (&["CLIENT", "UNPAUSE"], false, false),
            (&["BLPOP", "q", "0"], false, true),
            (&["NOSUCH"], false, false),
        ];
        for (args, paused, held) in cases {
            let d = Descriptor::of(args);
            assert_eq!(d.pausable(), paused, "{args:?}");
            assert_eq!(may_be_held(d.index()), held, "{args:?}");
        }
        assert!(!Descriptor::of(&["MULTI"][..]).pausable());
    }

    #[test]
    fn transaction_roles_follow_redis_arity_checks() {
        let tx = |a: &[&str]| Descriptor::of(a).tx;
        assert_eq!(tx(&["multi"]), TxOp::Multi);
        assert_eq!(tx(&["Exec"]), TxOp::End);
        assert_eq!(tx(&["discard"]), TxOp::End);
        assert_eq!(tx(&["watch", "a", "b"]), TxOp::Watch);
        assert_eq!(tx(&["unwatch"]), TxOp::Unwatch);
        // Refused for their arity, as any command: no role.
        for a in [
            &["multi", "x"][..],
            &["discard", "x"],
            &["watch"],
            &["unwatch", "x"],
        ] {
            assert_eq!(tx(a), TxOp::None, "{a:?}");
        }
        // But EXEC so refused ends the transaction and the watch.
        assert_eq!(tx(&["exec", "x"]), TxOp::Abort);
        assert!(TxOp::Abort.ends_watch(false) && TxOp::Abort.ends_watch(true));
        assert!(!TxOp::Abort.in_multi_after(true));
        // EXEC/DISCARD end a watch only inside MULTI, UNWATCH only outside.
        assert!(TxOp::End.ends_watch(true) && !TxOp::End.ends_watch(false));
        assert!(TxOp::Unwatch.ends_watch(false) && !TxOp::Unwatch.ends_watch(true));
        assert!(!TxOp::None.ends_watch(true) && !TxOp::Watch.ends_watch(false));
        // A nested MULTI is refused: still inside.
        assert!(TxOp::Multi.in_multi_after(true) && TxOp::None.in_multi_after(true));
        assert!(!TxOp::End.in_multi_after(true) && !TxOp::Unwatch.in_multi_after(false));
    }

    #[test]
    fn cluster_only_commands_are_known_by_name_and_arity() {
        let only = |args: &[&str]| {
            let d = Descriptor::of(args);
            d.info.is_some_and(|i| cluster_only(i, args.len()))
        };
        for args in [
            &["CLUSTER", "SLOTS"][..],
            &["cluster", "info"],
            &["CLUSTER", "HELP"],
            &["CLUSTER", "KEYSLOT", "k"],
            &["CLUSTER", "GETKEYSINSLOT", "1", "10"],
            &["READONLY"],
            &["readwrite"],
            &["ASKING"],
        ] {
            assert!(only(args), "{args:?}");
        }
        for args in [
            &["CLUSTER"][..],
            &["CLUSTER", "NOSUCH"],
            &["CLUSTER", "KEYSLOT"],
            &["READONLY", "x"],
            &["GET", "k"],
            &["INFO", "cluster"],
        ] {
            assert!(!only(args), "{args:?}");
        }
    }

    #[test]
    fn identify_routes_every_table_command_as_its_name_says() {
        for c in &table::COMMANDS[..table::TOP_LEVEL] {
            let name = c.name.to_ascii_uppercase();
            let args: Vec<&[u8]> = vec![name.as_bytes(), b"x"];
            let (route, info) = identify(&args[..]);
            assert_eq!(route, classify_upper(name.as_bytes(), &args[..]), "{name}");
            let info = info.expect("in the table");
            if c.has(table::CONTAINER) {
                assert_eq!(info.name, c.name, "unknown subcommand x: the container");
            } else {
                assert_eq!(info.index, c.index, "{name}");
            }
        }
    }

    #[test]
    fn identify_checks_the_arguments_where_the_route_depends_on_them() {
        let cases: [(&[&[u8]], Route); 6] = [
            (&[b"copy", b"a", b"b", b"DB", b"1"], Route::CrossDb),
            (&[b"copy", b"a", b"b"], Route::Forward),
            (
                &[b"xread", b"BLOCK", b"0", b"STREAMS", b"s", b"$"],
                Route::Stateful(Family::Blocking),
            ),
            (&[b"XREAD", b"STREAMS", b"s", b"0"], Route::Forward),
            (&[b"proxy", b"info"], Route::Proxy),
            (&[b"Get", b"k"], Route::Forward),
        ];
        for (args, want) in cases {
            assert_eq!(identify(args).0, want, "{args:?}");
        }
        assert!(identify(&[&b"proxy"[..], b"info"][..]).1.is_none());
        let sub = identify(&[&b"client"[..], b"list"][..])
            .1
            .expect("client|list");
        assert_eq!(sub.name, "client|list");
        assert_eq!(identify(&[&b"get"[..]][..]).1.map(|i| i.name), Some("get"));
    }
}
