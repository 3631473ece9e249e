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
//! tracking or `auth_passthrough` connection) publishes it here ([`Client::own`]);
//! for a session without one, the redirect goes to a *sink*: one idle RESP2
//! connection per upstream server that is never subscribed, so Redis drops what is
//! sent there, as it drops invalidations for a RESP2 client that is not subscribed
//! ([`Clients::sink_id`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

use crate::command::table;
use crate::router::Database;
use crate::upstream::dedicated::{Dedicated, ExclusiveConn};
use crate::upstream::UpstreamError;

/// Every open client session.
#[derive(Debug)]
pub struct Clients {
    started: Instant,
    /// Seconds since `started`, advanced by [`Clients::tick`] (the proxy's once-a-
    /// second sampler), so recording activity never reads the clock.
    now_secs: AtomicU64,
    map: Mutex<BTreeMap<u64, Arc<Client>>>,
    /// Per upstream server (`host:port`): the connection that stands for sessions
    /// without one of their own as a `CLIENT TRACKING` redirect target.
    sinks: tokio::sync::Mutex<HashMap<String, Dedicated>>,
    /// Bytes of buffers of every client together ([`Registration::set_memory`]).
    memory: AtomicUsize,
    /// The second (of [`Clients::seconds`], plus one) of the last eviction warning.
    warned: AtomicU64,
}

impl Default for Clients {
    fn default() -> Self {
        Clients {
            started: Instant::now(),
            now_secs: AtomicU64::new(0),
            map: Mutex::new(BTreeMap::new()),
            sinks: tokio::sync::Mutex::new(HashMap::new()),
            memory: AtomicUsize::new(0),
            warned: AtomicU64::new(0),
        }
    }
}

/// What a client may change about itself, as `CLIENT LIST` reports it.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// `CLIENT SETNAME`.
    pub name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-NAME`.
    pub lib_name: Option<Vec<u8>>,
    /// `CLIENT SETINFO LIB-VER`.
    pub lib_ver: Option<Vec<u8>>,
    /// The client-facing db index.
    pub db: u32,
    /// The negotiated protocol (2 or 3).
    pub resp: u8,
    /// The user the client is authenticated as.
    pub user: String,
    /// The client is in subscribed (pub/sub) mode.
    pub pubsub: bool,
    /// Inside MULTI.
    pub multi: bool,
    /// `CLIENT TRACKING` is on: the redirect (`redir=`: 0 for none), and BCAST.
    pub tracking: Option<(i64, bool)>,
}

/// One registered session.
#[derive(Debug)]
pub struct Client {
    /// Session id (`CLIENT ID`).
    pub id: u64,
    /// The client's address (`addr=`).
    pub addr: String,
    /// The proxy's address the client connected to (`laddr=`).
    pub laddr: String,
    created: Instant,
    /// Fired by `CLIENT KILL` or by the proxy's shutdown.
    token: CancellationToken,
    /// Fired only when the client is killed (not by shutdown).
    evicted: CancellationToken,
    killed: AtomicBool,
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
    exclusive: Mutex<Option<Exclusive>>,
    /// The session's own upstream connection, if it has one.
    own: Mutex<Option<Exclusive>>,
}

/// An upstream connection of a session's: the exclusive one a blocked session waits
/// on (for `CLIENT UNBLOCK`), or its own (for `CLIENT TRACKING … REDIRECT`).
#[derive(Debug, Clone)]
pub struct Exclusive {
    /// The database (hence the server) the connection belongs to.
    pub db: Arc<Database>,
    /// Redis's `CLIENT ID` of the connection (0 until it is checked out).
    pub upstream_id: Arc<AtomicU64>,
}

impl Client {
    /// The token the session's task watches: cancelled on `CLIENT KILL` (then
    /// [`Client::was_killed`] is true) or when the proxy shuts down.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// Whether `CLIENT KILL` ended this session.
    pub fn was_killed(&self) -> bool {
        self.killed.load(Relaxed)
    }

    /// The token fired only when the client is killed (`CLIENT KILL`, or evicted
    /// for `max_client_memory`): the session stops at once, even with replies
    /// waiting to be written.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    /// Bytes of the session's buffers, as it last published them.
    pub fn memory(&self) -> usize {
        self.memory.load(Relaxed)
    }

    fn kill(&self) {
        self.killed.store(true, Relaxed);
        self.token.cancel();
        self.evicted.cancel();
    }

    /// Records activity now (for `idle=`, to the second).
    #[inline]
    pub fn touch(&self, clients: &Clients) {
        self.last_active
            .store(clients.now_secs.load(Relaxed), Relaxed);
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
        *self.exclusive.lock().unwrap_or_else(|e| e.into_inner()) = on;
    }

    /// The fields `CLIENT LIST` reports, for the session to update.
    pub fn info(&self) -> MutexGuard<'_, ClientInfo> {
        self.info.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes the session's own upstream connection (`None`: it has none).
    pub fn set_own(&self, own: Option<Exclusive>) {
        *self.own.lock().unwrap_or_else(|e| e.into_inner()) = own;
    }

    /// The session's own upstream connection, if it has one.
    pub fn own(&self) -> Option<Exclusive> {
        self.own.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The exclusive connection the client is blocked on, if any.
    pub fn blocked_on(&self) -> Option<Exclusive> {
        self.exclusive
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
            "id={} addr={} name={} db={} age={} idle={} mode={} pending={} buffered={} memory={} cmd={}\n",
            self.id,
            self.addr,
            String::from_utf8_lossy(info.name.as_deref().unwrap_or_default()),
            info.db,
            self.created.elapsed().as_secs(),
            idle,
            mode,
            self.pending.load(Relaxed),
            self.buffered.load(Relaxed),
            self.memory.load(Relaxed),
            table::COMMANDS
                .get(self.last_cmd.load(Relaxed) as usize)
                .map_or("NULL", |c| c.name),
        )
    }

    /// The `CLIENT LIST` / `CLIENT INFO` line (with its newline); `cmd=` names the
    /// last command as Redis does (`client|list`, `NULL` before any).
    pub fn line(&self, clients: &Clients) -> String {
        let info = self.info().clone();
        let s = |v: &Option<Vec<u8>>| {
            v.as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned()
        };
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
        if flags.is_empty() {
            flags.push('N');
        }
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db={} sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir={} resp={} lib-name={} lib-ver={}\n",
            self.id,
            self.addr,
            self.laddr,
            s(&info.name),
            self.created.elapsed().as_secs(),
            idle,
            flags,
            info.db,
            if info.multi { 0 } else { -1 },
            table::COMMANDS
                .get(self.last_cmd.load(Relaxed) as usize)
                .map_or("NULL", |c| c.name),
            if info.user.is_empty() { "default" } else { &info.user },
            info.tracking.map_or(-1, |(redir, _)| redir),
            info.resp.max(2),
            s(&info.lib_name),
            s(&info.lib_ver),
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
    fn matches(&self, c: &Client) -> bool {
        if self.none {
            return false;
        }
        if !self.ids.is_empty() && !self.ids.contains(&c.id) {
            return false;
        }
        if self.addr.as_deref().is_some_and(|a| a != c.addr) {
            return false;
        }
        if self.laddr.as_deref().is_some_and(|a| a != c.laddr) {
            return false;
        }
        if let Some(age) = self.maxage {
            if c.created.elapsed().as_secs() < age {
                return false;
            }
        }
        if self.pubsub.is_some() || self.user.is_some() {
            let info = c.info();
            if self.pubsub.is_some_and(|p| p != info.pubsub) {
                return false;
            }
            if let Some(u) = &self.user {
                let user = if info.user.is_empty() {
                    "default"
                } else {
                    &info.user
                };
                if u != user {
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
        addr: String,
        laddr: String,
        token: CancellationToken,
    ) -> Registration {
        let client = Arc::new(Client {
            id,
            addr,
            laddr,
            created: Instant::now(),
            token,
            evicted: CancellationToken::new(),
            killed: AtomicBool::new(false),
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
            exclusive: Mutex::new(None),
            own: Mutex::new(None),
        });
        self.lock().insert(id, client.clone());
        Registration {
            clients: self.clone(),
            client,
        }
    }

    /// Advances the table's clock (called once a second).
    pub fn tick(&self) {
        self.now_secs.store(self.seconds(), Relaxed);
    }

    fn seconds(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Arc<Client>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
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
            addr: victim.addr.clone(),
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
        all.into_iter().filter(|c| filter.matches(c)).collect()
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
        if self.client.killed.load(Relaxed) {
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
        let memory = self.client.memory.swap(0, Relaxed);
        self.clients.memory.fetch_sub(memory, Relaxed);
    }
}
