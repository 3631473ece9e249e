//! The table of connected clients: what `CLIENT LIST` shows, and what `CLIENT KILL`,
//! `CLIENT UNBLOCK` and `CLIENT TRACKING … REDIRECT` act on.
//!
//! Clients see the proxy as their Redis, so these commands are answered from the
//! proxy's own sessions, never from the upstream connections they share. Each
//! session registers when it starts and is removed when it ends. The fields a client
//! changes rarely (name, library, db, protocol, flags) sit behind a small mutex that
//! only local commands and state changes take; the ones that change with every
//! request (last command, last activity) are atomics, so the hot path never locks.
//!
//! `CLIENT TRACKING ON REDIRECT <id>` names a session; Redis needs the id of a
//! connection. A session with an upstream connection of its own (subscriber,
//! tracking or `auth_passthrough` connection) publishes it here ([`Client::own`]).
//! A session without one is given one, opened for it (RESP3) and handed over
//! through its entry: its *push connection*, read for as long as the session lives
//! ([`Clients::push_sink_id`], [`Client::take_push_conn`]). Redis sends a redirect
//! target invalidations whatever it does later (a RESP3 client gets them as
//! pushes; a RESP2 client while subscribed, as messages), and tells the
//! redirecting clients once it is gone, so the stand-in must be the session's own
//! and live as long as it. On a cluster database the redirect goes to a *sink*:
//! one idle RESP2 connection per node that is never subscribed, so Redis drops
//! what is sent there ([`Clients::sink_id`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::command::table;
use crate::router::Database;
use crate::upstream::dedicated::{Dedicated, ExclusiveConn};
use crate::upstream::UpstreamError;

/// How often [`Clients::sweep`] runs.
pub const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Every open client session.
#[derive(Debug)]
pub struct Clients {
    started: Instant,
    /// Seconds since `started`, advanced by [`Clients::tick`] (the proxy's once-a-
    /// second sampler), so recording activity never reads the clock.
    now_secs: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Client>>>,
    /// The sessions that are not parked: what the sweep looks at (10,000 parked
    /// clients cost it nothing).
    awake: Mutex<HashMap<u64, Arc<Client>>>,
    /// Per upstream server (`host:port`): the connection that stands for sessions
    /// without one of their own as a `CLIENT TRACKING` redirect target.
    sinks: tokio::sync::Mutex<HashMap<String, Dedicated>>,
    /// Bytes of buffers of every client together ([`Registration::set_memory`]).
    memory: AtomicUsize,
    /// The second (of [`Clients::seconds`], plus one) of the last eviction warning.
    warned: AtomicU64,
    /// The proxy is shutting down: a session registered now is told at once.
    closing: AtomicBool,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            started: Instant::now(),
            now_secs: AtomicU64::new(0),
            map: Mutex::new(BTreeMap::new()),
            awake: Mutex::new(HashMap::new()),
            sinks: tokio::sync::Mutex::new(HashMap::new()),
            memory: AtomicUsize::new(0),
            warned: AtomicU64::new(0),
            closing: AtomicBool::new(false),
        }
    }
}

/// What a session is told through its entry ([`Client::poll_signal`]). Signals are
/// bits of one atomic and the session's task is woken through one waker slot, so an
/// entry costs no cancellation token (each is a heap node of its own).
pub mod signal {
    /// `CLIENT KILL`, or eviction for `max_client_memory`: close at once (sticky).
    pub const KILLED: u8 = 1;
    /// The proxy shuts down: stop reading, deliver what is pending (sticky).
    pub const SHUTDOWN: u8 = 2;
    /// Idle for a sweep period or more: park if nothing is held
    /// ([`super::Clients::sweep`]).
    pub const SWEEP: u8 = 4;
    /// A push connection was opened for the session: take it
    /// ([`super::Client::take_push_conn`]).
    pub const PUSHES: u8 = 32;
    /// A reload published a new configuration snapshot.
    pub const RELOAD: u8 = 8;
    /// State, not a signal: the session is parked (the sweep skips it).
    pub(crate) const PARKED: u8 = 16;
    /// The signals that stay set once raised.
    pub(crate) const STICKY: u8 = KILLED | SHUTDOWN;
}

/// What a client may change about itself, as `CLIENT LIST` reports it.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// Its name, library and user, if it set any (boxed: most clients do not,
    /// and every idle client has an entry).
    pub names: Option<Box<Names>>,
    /// The client-facing db index.
    pub db: u32,
    /// The negotiated protocol (2 or 3).
    pub resp: u8,
    /// The client is in subscribed (pub/sub) mode.
    pub pubsub: bool,
    /// Inside MULTI.
    pub multi: bool,
    /// `CLIENT TRACKING` is on: the redirect (`redir=`: 0 for none), and BCAST.
    pub tracking: Option<(i64, bool)>,
}

/// The names a client gave itself, and the user it authenticated as.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Vec<u8>>,
    /// The user the client authenticated as (`None`: the default user).
    pub user: Option<String>,
}

/// [`Names`]' fields, borrowed: name, library name and version, user.
pub type NameParts<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Option<&'a str>,
);

impl Names {
    /// Its fields, borrowed (compared without copying them).
    pub fn parts(&self) -> NameParts<'_> {
        (
            self.name.as_deref(),
            self.lib_name.as_deref(),
            self.lib_ver.as_deref(),
            self.user.as_deref(),
        )
    }
}

impl ClientInfo {
    fn name(&self) -> Option<&[u8]> {
        self.names.as_ref().and_then(|n| n.name.as_deref())
    }

    /// The user's name as Redis shows it.
    fn user(&self) -> &str {
        self.names
            .as_ref()
            .and_then(|n| n.user.as_deref())
            .filter(|u| !u.is_empty())
            .unwrap_or("default")
    }
}

/// One registered session.
#[derive(Debug)]
pub struct Client {
    /// Session id (`CLIENT ID`).
    pub id: u64,
    /// The client's address (`addr=`; formatted when asked for, see [`Client::addr`]).
    peer: Addr,
    /// The proxy's address the client connected to (`laddr=`).
    local: Addr,
    /// [`Clients::seconds`] when it connected (`age=` is counted in whole seconds,
    /// as Redis counts it).
    created: u32,
    /// [`signal`] bits raised for the session.
    signals: AtomicU8,
    /// The session's task, woken when a signal is raised.
    waker: Mutex<Option<Waker>>,
    /// `waker` holds the session's task's waker (always the same task's: polling
    /// again needs no lock until a signal took it).
    registered: AtomicBool,
    /// A request arrived since the last sweep ([`Clients::sweep`]).
    stirred: AtomicBool,
    /// The session declined to park for reasons only a request can change (TLS,
    /// subscribed, …): the sweep passes it by until its next request.
    declined: AtomicBool,
    /// Bytes of the session's buffers, as it last published them.
    memory: AtomicUsize,
    /// Replies the session waits for or has not handed to its outbox yet.
    pending: AtomicUsize,
    /// Bytes of replies waiting to be written to the client.
    buffered: AtomicUsize,
    /// Command-table index of the last command (`table::COUNT` if unknown).
    last_cmd: AtomicU16,
    /// [`Clients::tick`]'s seconds at the last request.
    last_active: AtomicU64,
    /// Waiting for a blocking command's reply.
    blocked: AtomicBool,
    info: Mutex<ClientInfo>,
    /// The upstream connections other clients may need to reach (boxed: most
    /// clients never have one, and every idle client has an entry).
    conns: Mutex<Option<Box<Conns>>>,
}

/// A session's upstream connections that `CLIENT UNBLOCK` and `CLIENT TRACKING …
/// REDIRECT` look up.
#[derive(Debug, Default)]
struct Conns {
    /// The exclusive connection the client is blocked on.
    blocked_on: Option<Exclusive>,
    /// The session's own upstream connection.
    own: Option<Exclusive>,
    /// A push connection opened for the session as a RESP3 redirect target
    /// ([`Clients::push_sink_id`]), or the own connection it let go while a
    /// redirect named it ([`Client::keep_push_conn`]).
    pushes: Option<PushConn>,
    /// Redis's `CLIENT ID` of the own connection last named by a redirect
    /// ([`Client::hand_out`]; 0: none).
    handed: u64,
}

impl Conns {
    /// The id of the push connection to `cfg`'s server, if there is one.
    fn push_id(&self, cfg: &crate::config::UpstreamConfig) -> Option<u64> {
        self.pushes
            .as_ref()
            .filter(|p| p.upstream.same_redis(cfg))
            .map(|p| p.id)
    }
}

/// A connection that carries a RESP3 session's redirected invalidations.
#[derive(Debug)]
struct PushConn {
    /// The server it is on.
    upstream: crate::config::UpstreamConfig,
    /// Redis's `CLIENT ID` of it.
    id: u64,
    /// Until the session takes it.
    conn: Option<Dedicated>,
}

/// A socket address in 16 bytes (an IPv6 one boxed): every client entry has two.
#[derive(Debug)]
enum Addr {
    Unknown,
    V4(std::net::Ipv4Addr, u16),
    V6(Box<std::net::SocketAddrV6>),
    /// The path of the Unix socket the client connected to.
    Unix(Arc<std::path::PathBuf>),
}

impl Addr {
    fn new(addr: Option<SocketAddr>) -> Addr {
        match addr {
            None => Addr::Unknown,
            Some(SocketAddr::V4(a)) => Addr::V4(*a.ip(), a.port()),
            Some(SocketAddr::V6(a)) => Addr::V6(Box::new(a)),
        }
    }

    /// `ip:port`, `""` if unknown.
    fn text(&self) -> String {
        match self {
            Addr::Unknown => String::new(),
            Addr::V4(ip, port) => std::net::SocketAddrV4::new(*ip, *port).to_string(),
            Addr::V6(a) => a.to_string(),
            // As Redis shows it: `path:0`.
            Addr::Unix(p) => format!("{}:0", p.display()),
        }
    }
}

/// An upstream connection of a session's: the exclusive one a blocked session waits
/// on (for `CLIENT UNBLOCK`), or its own (for `CLIENT TRACKING … REDIRECT`).
#[derive(Debug, Clone)]
pub struct Exclusive {
    /// The database (hence the server) the connection belongs to.
    pub db: Arc<Database>,
    /// Redis's `CLIENT ID` of the connection (0 until it is checked out).
    pub upstream_id: Arc<AtomicU64>,
    /// On a cluster: where the connection is now (it follows its slot from node
    /// to node, so `upstream_id` is of the node it started on).
    pub moving: Option<Arc<Mutex<Located>>>,
}

/// Where a connection that may move between a cluster's nodes is: Redis's
/// `CLIENT ID` of it there, and the node's `host:port`.
#[derive(Debug, Clone)]
pub struct Located {
    pub id: Arc<AtomicU64>,
    pub node: String,
}

impl Exclusive {
    /// Redis's `CLIENT ID` of the connection now, and on a cluster its node.
    pub fn now(&self) -> (u64, Option<String>) {
        match &self.moving {
            Some(m) => {
                let at = m.lock().unwrap_or_else(|e| e.into_inner());
                (at.id.load(Relaxed), Some(at.node.clone()))
            }
            None => (self.upstream_id.load(Relaxed), None),
        }
    }
}

impl Client {
    /// The client's address (`addr=`), `""` if unknown.
    pub fn addr(&self) -> String {
        self.peer.text()
    }

    /// The proxy's address the client connected to (`laddr=`), `""` if unknown.
    pub fn laddr(&self) -> String {
        self.local.text()
    }

    /// Whether `CLIENT KILL` (or an eviction) ended this session.
    pub fn was_killed(&self) -> bool {
        self.signals.load(Relaxed) & signal::KILLED != 0
    }

    /// Ready with the raised signals among `mask` (clearing those that are not
    /// sticky); otherwise the task is woken when one is raised.
    /// The entry belongs to one session, polled by its one task: the waker is
    /// stored once, and again only after a signal took it.
    pub fn poll_signal(&self, cx: &mut std::task::Context<'_>, mask: u8) -> Poll<u8> {
        if self.signals.load(Acquire) & mask == 0 {
            if self.registered.load(Acquire) {
                return Poll::Pending;
            }
            {
                let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
                if !w.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *w = Some(cx.waker().clone());
                }
                self.registered.store(true, Release);
            }
            // (Raised before the waker was in place: seen here.)
            if self.signals.load(Acquire) & mask == 0 {
                return Poll::Pending;
            }
        }
        let taken = mask & !signal::STICKY;
        Poll::Ready(self.signals.fetch_and(!taken, AcqRel) & mask)
    }

    /// Resolves when the client is killed or the proxy shuts down.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            self.poll_signal(cx, signal::KILLED | signal::SHUTDOWN)
                .map(|_| ())
        })
        .await
    }

    /// Raises `bits` and wakes the session.
    fn raise(&self, bits: u8) {
        self.signals.fetch_or(bits, Release);
        let waker = {
            let mut w = self.waker.lock().unwrap_or_else(|e| e.into_inner());
            self.registered.store(false, Release);
            w.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// The session cannot park until its next request: the sweep passes it by
    /// until then.
    pub fn decline_park(&self) {
        self.declined.store(true, Relaxed);
    }

    /// Bytes of the session's buffers, as it last published them.
    pub fn memory(&self) -> usize {
        self.memory.load(Relaxed)
    }

    fn kill(&self) {
        self.raise(signal::KILLED);
    }

    /// Records activity now (for `idle=`, to the second).
    #[inline]
    pub fn touch(&self, clients: &Clients) {
        self.last_active
            .store(clients.now_secs.load(Relaxed), Relaxed);
        self.stirred.store(true, Relaxed);
    }

    /// Records the last command run (a command-table index).
    #[inline]
    pub fn set_last_cmd(&self, cmd: u16) {
        self.last_cmd.store(cmd, Relaxed);
    }

    /// Marks the client blocked on a blocking command waiting on this exclusive
    /// connection (`None`: not blocked).
    pub fn set_blocked(&self, on: Option<Exclusive>) {
        if on.is_none() && !self.blocked.load(Relaxed) {
            return;
        }
        self.blocked.store(on.is_some(), Relaxed);
        self.change_conns(|c| c.blocked_on = on);
    }

    /// The fields `CLIENT LIST` reports, for the session to update.
    pub fn info(&self) -> MutexGuard<'_, ClientInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the session's own upstream connection (`None`: it has none).
    pub fn set_own(&self, own: Option<Exclusive>) {
        self.change_conns(|c| c.own = own);
    }

    /// The session's own upstream connection, if it has one.
    pub fn own(&self) -> Option<Exclusive> {
        self.conns().as_ref().and_then(|c| c.own.clone())
    }

    /// A redirect names the session's own connection, `id`: when the session
    /// lets go of it, it is kept as its push connection ([`Client::keep_push_conn`]).
    pub fn hand_out(&self, id: u64) {
        self.change_conns(|c| c.handed = id);
    }

    /// Whether a redirect named the session's own connection (and the session
    /// still has it): other clients' invalidations may come there.
    pub fn handed_out(&self) -> bool {
        self.conns().as_ref().is_some_and(|c| c.handed != 0)
    }

    /// Whether a redirect named `id`, the session's own connection that it is
    /// letting go: if so, it is to stay as the session's push connection, so
    /// that the redirect still reaches the session (Redis names a client, not a
    /// connection), and it is published as such (`upstream`: its server).
    pub fn keep_push_conn(&self, id: u64, upstream: &crate::config::UpstreamConfig) -> bool {
        self.change_conns(|c| {
            let kept = id != 0 && c.handed == id && c.pushes.is_none();
            if kept {
                c.handed = 0;
                c.pushes = Some(PushConn {
                    upstream: upstream.clone(),
                    id,
                    conn: None,
                });
            }
            kept
        })
    }

    /// The id of the session's push connection to `cfg`'s server, if it has one.
    pub fn push_id(&self, cfg: &crate::config::UpstreamConfig) -> Option<u64> {
        self.conns().as_deref().and_then(|c| c.push_id(cfg))
    }

    /// The exclusive connection the client is blocked on, if any.
    pub fn blocked_on(&self) -> Option<Exclusive> {
        self.conns().as_ref().and_then(|c| c.blocked_on.clone())
    }

    fn conns(&self) -> MutexGuard<'_, Option<Box<Conns>>> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the published connections (the box goes when both are gone).
    fn change_conns<T>(&self, change: impl FnOnce(&mut Conns) -> T) -> T {
        let mut conns = self.conns();
        let out = change(conns.get_or_insert_with(Box::default));
        if conns.as_ref().is_some_and(|c| {
            c.own.is_none() && c.blocked_on.is_none() && c.pushes.is_none() && c.handed == 0
        }) {
            *conns = None;
        }
        out
    }

    /// The push connection opened for this session ([`Clients::push_sink_id`]),
    /// for it to read from now on; its id stays published until
    /// [`Client::push_conn_closed`].
    pub fn take_push_conn(&self) -> Option<Dedicated> {
        self.conns()
            .as_mut()
            .and_then(|c| c.pushes.as_mut())
            .and_then(|p| p.conn.take())
    }

    /// The session's push connection closed: a later redirect opens another.
    pub fn push_conn_closed(&self) {
        self.change_conns(|c| c.pushes = None);
    }

    /// Whole seconds since the client connected (`age=`).
    fn age(&self, clients: &Clients) -> u64 {
        clients.seconds().saturating_sub(u64::from(self.created))
    }

    /// The `PROXY CLIENTS` line (with its newline): what the proxy holds for the
    /// client and the connection mode it is in.
    pub fn proxy_line(&self, clients: &Clients) -> String {
        let info = self.info().clone();
        let idle = clients
            .seconds()
            .saturating_sub(self.last_active.load(Relaxed));
        let mode = if info.pubsub {
            "subscribed"
        } else if info.multi {
            "transaction"
        } else if self.blocked.load(Relaxed) {
            "blocking"
        } else if self.own().is_some() {
            "private"
        } else {
            "shared"
        };
        format!(
            "id={} addr={} name={} db={} age={} idle={} mode={} pending={} buffered={} memory={} cmd={} parked={}\n",
            self.id,
            self.addr(),
            String::from_utf8_lossy(info.name().unwrap_or_default()),
            info.db,
            self.age(clients),
            idle,
            mode,
            self.pending.load(Relaxed),
            self.buffered.load(Relaxed),
            self.memory.load(Relaxed),
            table::COMMANDS
                .get(self.last_cmd.load(Relaxed) as usize)
                .map_or("NULL", |c| c.name),
            // Idle, holding nothing but its entry (see `session::run`).
            u8::from(self.signals.load(Relaxed) & signal::PARKED != 0),
        )
    }

    /// The `CLIENT LIST` / `CLIENT INFO` line (with its newline); `cmd=` names the
    /// last command as Redis does (`client|list`, `NULL` before any).
    pub fn line(&self, clients: &Clients) -> String {
        let info = self.info().clone();
        let s = |v: Option<&[u8]>| {
            v.map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
        let names = info.names.as_deref();
        let idle = clients
            .seconds()
            .saturating_sub(self.last_active.load(Relaxed));
        let mut flags = String::new();
        if info.pubsub {
            flags.push('P');
        }
        if info.multi {
            flags.push('x');
        }
        if self.blocked.load(Relaxed) {
            flags.push('b');
        }
        if let Some((_, bcast)) = info.tracking {
            flags.push('t');
            if bcast {
                flags.push('B');
            }
        }
        if matches!(self.peer, Addr::Unix(_)) {
            flags.push('U');
        }
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr(),
            self.laddr(),
            s(info.name()),
            self.age(clients),
            idle,
            flags,
            info.db,
            if info.multi { 0 } else { -1 },
            table::COMMANDS
                .get(self.last_cmd.load(Relaxed) as usize)
                .map_or("NULL", |c| c.name),
            info.user(),
            info.tracking.map_or(-1, |(redir, _)| redir),
            info.resp.max(2),
            s(names.and_then(|n| n.lib_name.as_deref())),
            s(names.and_then(|n| n.lib_ver.as_deref())),
        )
    }
}

/// Which clients `CLIENT KILL` (filter form) or `CLIENT LIST` selects.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    /// `ID`: only these ids (empty: any).
    pub ids: Vec<u64>,
    /// `TYPE`: `Some(true)` pub/sub clients, `Some(false)` normal ones; `None` any.
    pub pubsub: Option<bool>,
    /// `TYPE master|replica`: matches nothing (the proxy has no such clients).
    pub none: bool,
    /// `ADDR ip:port`.
    pub addr: Option<String>,
    /// `LADDR ip:port`.
    pub laddr: Option<String>,
    /// `USER name`.
    pub user: Option<String>,
    /// `MAXAGE secs`: clients older than this.
    pub maxage: Option<u64>,
}

impl Filter {
    fn matches(&self, c: &Client, clients: &Clients) -> bool {
        if self.none {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.contains(&c.id) {
            return false;
        }
        if self.addr.as_deref().is_some_and(|a| a != c.addr()) {
            return false;
        }
        if self.laddr.as_deref().is_some_and(|a| a != c.laddr()) {
            return false;
        }
        if let Some(age) = self.maxage {
            if c.age(clients) < age {
                return false;
            }
        }
        if self.pubsub.is_some() || self.user.is_some() {
            let info = c.info();
            if self.pubsub.is_some_and(|p| p != info.pubsub) {
                return false;
            }
            if let Some(u) = &self.user {
                if u != info.user() {
                    return false;
                }
            }
        }
        true
    }
}

impl Clients {
    /// Registers a session; it is removed when the returned guard drops.
    pub fn register(
        self: &Arc<Self>,
        id: u64,
        peer: Option<SocketAddr>,
        local: Option<SocketAddr>,
        unix: Option<std::path::PathBuf>,
    ) -> Registration {
        // A Unix socket client: both addresses are the socket's path, as in Redis.
        let (peer, local) = match unix {
            Some(path) => {
                let path = Arc::new(path);
                (Addr::Unix(path.clone()), Addr::Unix(path))
            }
            None => (Addr::new(peer), Addr::new(local)),
        };
        let client = Arc::new(Client {
            id,
            peer,
            local,
            created: u32::try_from(self.seconds()).unwrap_or(u32::MAX),
            signals: AtomicU8::new(0),
            waker: Mutex::new(None),
            registered: AtomicBool::new(false),
            stirred: AtomicBool::new(false),
            declined: AtomicBool::new(false),
            memory: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            buffered: AtomicUsize::new(0),
            last_cmd: AtomicU16::new(u16::MAX),
            last_active: AtomicU64::new(self.seconds()),
            blocked: AtomicBool::new(false),
            info: Mutex::new(ClientInfo {
                resp: 2,
                ..ClientInfo::default()
            }),
            conns: Mutex::new(None),
        });
        self.lock().insert(id, client.clone());
        self.awake().insert(id, client.clone());
        // (After the insert: either this sees `closing`, or `shut_down` sees it.)
        if self.closing.load(SeqCst) {
            client.raise(signal::SHUTDOWN);
        }
        Registration {
            clients: self.clone(),
            client,
        }
    }

    /// Advances the table's clock (called once a second).
    pub fn tick(&self) {
        self.now_secs.store(self.seconds(), Relaxed);
    }

    /// Asks every session that had no request since the previous sweep to park
    /// ([`signal::SWEEP`]), except those that declined since their last request;
    /// parked sessions are not looked at. Called every [`SWEEP_EVERY`]: a session parks between
    /// one and two periods after its last request. Costs a look at each entry, no
    /// clock reads; the sessions' hot path pays one relaxed store per request.
    pub fn sweep(&self) {
        for c in self.awake().values() {
            if c.stirred.load(Relaxed) {
                c.stirred.store(false, Relaxed);
                c.declined.store(false, Relaxed);
                continue;
            }
            if c.signals.load(Relaxed) & signal::SWEEP == 0 && !c.declined.load(Relaxed) {
                c.raise(signal::SWEEP);
            }
        }
    }

    /// The proxy shuts down: every session is told ([`signal::SHUTDOWN`]), and
    /// so is every session registered from now on.
    pub fn shut_down(&self) {
        self.closing.store(true, SeqCst);
        self.raise_all(signal::SHUTDOWN);
    }

    /// Raises `bits` for every session (a reload: [`signal::RELOAD`]).
    pub fn raise_all(&self, bits: u8) {
        for c in self.lock().values() {
            c.raise(bits);
        }
    }

    fn seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn awake(&self) -> MutexGuard<'_, HashMap<u64, Arc<Client>>> {
        self.awake.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The id of a connection to `db`'s server that is never subscribed (RESP2):
    /// Redis drops invalidation messages redirected to it. Opened with the
    /// database's credentials when first needed, and again after it closed.
    pub async fn sink_id(&self, db: &Database) -> Result<u64, UpstreamError> {
        let cfg = &db.config.upstream;
        let mut sinks = self.sinks.lock().await;
        let key = cfg.address();
        if let Some(id) = sinks
            .get(&key)
            .map(|s| s.upstream_id().load(Relaxed))
            .filter(|&id| id != 0)
        {
            return Ok(id);
        }
        let conn = ExclusiveConn::open(cfg, false, true).await?;
        let sink = Dedicated::private(conn, db.label(), cfg.command_timeout, 0);
        let id = sink.upstream_id().load(Relaxed);
        if id == 0 {
            return Err(UpstreamError::Connect {
                addr: key,
                reason: "CLIENT ID was not answered".into(),
            });
        }
        sinks.insert(key, sink);
        Ok(id)
    }

    /// The id of the push connection to `db`'s server of the RESP3 session
    /// `target` (see the module docs): opened with the database's credentials
    /// when first needed and handed to the session (signal
    /// [`signal::PUSHES`]), which then writes what Redis pushes on it.
    pub async fn push_sink_id(
        &self,
        target: &Client,
        db: &Database,
        push_limit: usize,
    ) -> Result<u64, UpstreamError> {
        let cfg = &db.config.upstream;
        if let Some(id) = target.push_id(cfg) {
            return Ok(id);
        }
        let conn = ExclusiveConn::open(cfg, true, true).await?;
        let conn = Dedicated::private(conn, db.label(), cfg.command_timeout, push_limit);
        let id = conn.upstream_id().load(Relaxed);
        if id == 0 {
            return Err(UpstreamError::Connect {
                addr: cfg.address(),
                reason: "CLIENT ID was not answered".into(),
            });
        }
        let id = target.change_conns(|c| {
            // (Another redirect may have opened one meanwhile: that one stays.)
            if let Some(id) = c.push_id(cfg) {
                return id;
            }
            c.pushes = Some(PushConn {
                upstream: cfg.clone(),
                id,
                conn: Some(conn),
            });
            id
        });
        target.raise(signal::PUSHES);
        Ok(id)
    }

    /// Bytes of buffers of every client together.
    pub fn memory(&self) -> usize {
        self.memory.load(Relaxed)
    }

    /// Whether an eviction may be logged now: at most once a second, so a flood
    /// of slow clients cannot flood the log.
    pub fn may_warn(&self) -> bool {
        let now = self.seconds() + 1;
        self.warned.swap(now, Relaxed) != now
    }

    /// Closes the client whose buffers are largest (`max_client_memory`, as Redis's
    /// `maxmemory-clients`): it is gone from the table and from the total at once,
    /// so the next check does not pick another before its session has ended.
    pub fn evict_largest(&self) -> Option<Evicted> {
        let victim = self.lock().values().max_by_key(|c| c.memory()).cloned()?;
        victim.kill();
        self.lock().remove(&victim.id);
        let memory = victim.memory.swap(0, Relaxed);
        self.memory.fetch_sub(memory, Relaxed);
        Some(Evicted {
            id: victim.id,
            addr: victim.addr(),
            memory,
        })
    }

    /// One session by id.
    pub fn get(&self, id: u64) -> Option<Arc<Client>> {
        self.lock().get(&id).cloned()
    }

    /// The sessions `filter` selects, in id order.
    pub fn select(&self, filter: &Filter) -> Vec<Arc<Client>> {
        let all: Vec<Arc<Client>> = self.lock().values().cloned().collect();
        all.into_iter()
            .filter(|c| filter.matches(c, self))
            .collect()
    }

    /// Kills the sessions `filter` selects, except `me` when `skip_me`. Returns how
    /// many were selected and whether `me` is one of them (the caller closes its
    /// own connection after replying, as Redis does).
    pub fn kill(&self, filter: &Filter, me: u64, skip_me: bool) -> (usize, bool) {
        let mut killed = 0;
        let mut myself = false;
        for c in self.select(filter) {
            if c.id == me {
                if skip_me {
                    continue;
                }
                myself = true;
            } else {
                c.kill();
                // Gone from the table at once, as Redis frees a killed client.
                self.lock().remove(&c.id);
            }
            killed += 1;
        }
        (killed, myself)
    }
}

/// A client closed by [`Clients::evict_largest`].
#[derive(Debug)]
pub struct Evicted {
    /// Its id.
    pub id: u64,
    /// Its address.
    pub addr: String,
    /// The memory it used.
    pub memory: usize,
}

/// A session's entry; dropping it removes the session from the table.
#[derive(Debug)]
pub struct Registration {
    clients: Arc<Clients>,
    client: Arc<Client>,
}

impl std::ops::Deref for Registration {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Registration {
    /// Marks the session parked (the sweep passes it by) or awake.
    pub fn set_parked(&self, parked: bool) {
        let c = &self.client;
        if parked {
            c.signals.fetch_or(signal::PARKED, Relaxed);
            self.clients.awake().remove(&c.id);
        } else {
            c.signals.fetch_and(!signal::PARKED, Relaxed);
            self.clients.awake().insert(c.id, c.clone());
        }
    }

    /// Publishes how many replies the session waits for and how many bytes of
    /// replies wait to be written (`PROXY CLIENTS`).
    #[inline]
    pub fn set_queue(&self, pending: usize, buffered: usize) {
        self.client.pending.store(pending, Relaxed);
        self.client.buffered.store(buffered, Relaxed);
    }

    /// Publishes the bytes of the session's buffers; returns the total of every
    /// client's. A killed client publishes nothing more (its memory left the total
    /// when it was killed, or leaves it when its entry drops).
    pub fn set_memory(&self, bytes: usize) -> usize {
        let total = &self.clients.memory;
        if self.client.was_killed() {
            return total.load(Relaxed);
        }
        let old = self.client.memory.swap(bytes, Relaxed);
        if bytes >= old {
            total.fetch_add(bytes - old, Relaxed) + (bytes - old)
        } else {
            total.fetch_sub(old - bytes, Relaxed) - (old - bytes)
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.clients.lock().remove(&self.client.id);
        self.clients.awake().remove(&self.client.id);
        let memory = self.client.memory.swap(0, Relaxed);
        self.clients.memory.fetch_sub(memory, Relaxed);
    }
}
