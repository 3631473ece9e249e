//! Transactions on a held connection (MULTI/WATCH bookkeeping) and the
//! `auth_passthrough` login that gives a session a private connection.

use super::dispatch::Target;
use super::follow::HeldConn;
use super::local;
use super::mode::{Held, Mode, Queued};
use super::prefix;
use super::queue::error_text;
use super::queue::Pending;
use super::tracking::Hook;
use super::Session;
use crate::cluster::merge;
use crate::cluster::Cluster;
use crate::command::{arity_allows, table, upper, ArgList, Descriptor, Route, TxOp};
use crate::config::{Secret, UpstreamConfig};
use crate::context::View;
use crate::protocol::reply;
use crate::router::Database;
use crate::upstream::connect::encode_auth;
use crate::upstream::dedicated::{Dedicated, ExclusiveConn};
use crate::upstream::UpstreamError;
use bytes::Bytes;
use std::sync::Arc;

/// Credentials a client logged in to Redis with (`auth_passthrough`).
pub(super) struct Login {
    pub user: Option<String>,
    pub password: Secret,
    /// On a cluster database: the cluster as this login sees it
    /// ([`Cluster::login`]), made for the first request that needs it.
    pub view: Option<Arc<Cluster>>,
    /// Which login of the session this is (its connections are not another's).
    pub id: u64,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A transaction whose held connection was lost (or refused by an open breaker)
/// while it was under way: what was queued or watched there is gone, and the
/// proxy answers the rest of it itself ([`Session::lost_step`]) so that nothing
/// the client meant for the transaction runs outside it, and EXEC fails.
pub(super) struct Lost {
    /// Inside MULTI (the client's view: a MULTI was sent).
    pub multi: bool,
    /// EXEC answers `-EXECABORT`: the MULTI itself or a queued command was lost,
    /// or a command was refused while queueing. Otherwise (only a WATCH was lost)
    /// EXEC answers as for a WATCH conflict.
    pub dirty: bool,
}

/// Redis's refusal of EXEC (`name` "exec") or DISCARD outside MULTI, which runs
/// nothing and leaves a WATCH in force.
pub(super) fn end_refusal(name: &str) -> &'static [u8] {
    match name {
        "exec" => b"-ERR EXEC without MULTI\r\n",
        _ => b"-ERR DISCARD without MULTI\r\n",
    }
}

impl Session {
    /// Tracks MULTI/EXEC/WATCH for a request sent to the held connection, and
    /// returns whether the connection has no transaction state after it (an
    /// exclusive one can then be given back).
    pub(super) fn transaction_step(&mut self, op: TxOp) -> bool {
        let Some(held) = self.mode.held_mut() else {
            return true;
        };
        let was_multi = held.in_multi;
        let in_multi = op.in_multi_after(was_multi);
        if in_multi != was_multi {
            // MULTI, or the end of the transaction (EXEC, DISCARD, an EXEC
            // refused for its arity). (EXEC or DISCARD without MULTI is refused,
            // and a WATCH stays: the connection must not go back to the pool
            // watching keys.)
            held.in_multi = in_multi;
            held.dirty = false;
            held.queued = 0;
            held.locals.clear();
            held.unprefix.clear();
        } else if was_multi && matches!(op, TxOp::None | TxOp::Unwatch) {
            // Queued by Redis (a nested MULTI and a WATCH are refused at once);
            // also for the requests the proxy looked at before sending them here.
            held.queued += 1;
        }
        if op.ends_watch(was_multi) {
            held.watching = false;
        } else if op == TxOp::Watch && !was_multi {
            held.watching = true;
        }
        let idle = !held.in_multi && !held.watching;
        if was_multi != held.in_multi {
            self.publish();
        }
        idle
    }

    /// [`Session::transaction_step`] for a request sent to the held connection;
    /// once the connection has no transaction state, how to let go of it
    /// ([`Session::release`]'s `clean`): an exclusive one goes back to the pool
    /// (`true`); a connection of the session's own kept for a WATCH only
    /// ([`Session::owns_watch`]) closes once it has answered (`false`), so that
    /// the session, with nothing on a connection of its own, is served by the
    /// shared ones again (a lost one is then retried, as for any client).
    /// `None`: kept.
    pub(super) fn held_done(&mut self, op: TxOp) -> Option<bool> {
        if !self.transaction_step(op) {
            return None;
        }
        match self.mode {
            Mode::Exclusive(_) => Some(true),
            Mode::Private(_) if self.tracking.is_none() && self.login.is_none() => Some(false),
            _ => None,
        }
    }

    /// The held connection failed (lost, timed out, could not be opened, refused
    /// by an open breaker): let it go. A transaction under way on it (MULTI
    /// queued, or a WATCH in force) is not forgotten but [`Lost`]: nothing the
    /// client sends before its EXEC or DISCARD may run outside it. Unless nothing
    /// of it reached Redis and the client was told of nothing (`may_have_run`
    /// false, no earlier reply on the connection, no MULTI the proxy answered):
    /// then there is no transaction, as after a MULTI that Redis refused, and the
    /// client's next commands run as usual.
    pub(super) fn lose_held(&mut self, may_have_run: bool) {
        if let Mode::Exclusive(h) = &self.mode {
            if (h.in_multi || h.watching) && (may_have_run || h.known) {
                self.lost = Some(Lost {
                    multi: h.in_multi,
                    dirty: h.in_multi,
                });
            }
        }
        self.release(false);
    }

    /// The refusal of `what` (which needs a connection of the session's own,
    /// `verb` "is" or "are") inside a transaction; while a WATCH whose connection
    /// was lost is in force outside MULTI ([`Lost`]), it says that instead.
    pub(super) fn transaction_refusal(&self, what: &str, verb: &str) -> Vec<u8> {
        let text = match &self.lost {
            Some(l) if !l.multi => format!("{what} under a WATCH whose connection was lost is not supported by redis-sidecar: UNWATCH first (EXEC would fail as for a changed key)"),
            _ => format!("{what} inside a transaction {verb} not supported by redis-sidecar"),
        };
        format!("-ERR {text}\r\n").into_bytes()
    }

    /// Whether `cmd`, from a RESP3 session subscribed under a lost WATCH, may be
    /// answered by [`Session::lost_step`]: a transaction command, or anything
    /// inside the MULTI begun since. It is answered once every earlier request
    /// sent to the subscriber connection is (a barrier), as whatever else the
    /// proxy answers while subscribed.
    pub(super) fn lost_watch_subscribed(&self, cmd: &Descriptor) -> bool {
        matches!(self.mode, Mode::Subscribed(_))
            && self.state.resp3
            && !matches!(cmd.route, Route::Reset | Route::Quit)
            && self.lost.as_ref().is_some_and(|l| {
                l.multi || cmd.route == Route::Stateful(crate::command::Family::Transaction)
            })
    }

    /// Inside a MULTI that has no held connection: deferred on a cluster until a
    /// key names the node, or [`Lost`].
    pub(super) fn multi_unheld(&self) -> bool {
        self.deferred_multi || self.lost.as_ref().is_some_and(|l| l.multi)
    }

    /// A request while the session's transaction is [`Lost`], answered as Redis
    /// answers a client whose transaction will fail: inside MULTI every command
    /// is queued (`+QUEUED`, or Redis's refusal at queueing: a wrong number of
    /// arguments, an unknown command; `deny_commands` before this) and never runs; EXEC
    /// answers `-EXECABORT` when the MULTI itself was lost or a command was
    /// refused, else what a WATCH conflict gives (`*-1`, RESP3 `_`: the watched
    /// keys may have changed unseen). Outside MULTI (a lost WATCH) only the
    /// transaction commands are answered here. `None`: not answered here (RESET
    /// and QUIT, which end it, and commands outside MULTI go on as usual).
    ///
    /// A session subscribed under a lost WATCH ([`Session::lost_watch_subscribed`])
    /// is answered so in RESP3, where Redis runs transactions on a subscribed
    /// connection; in RESP2 Redis refuses them there, and the subscriber
    /// connection answers (its refused `EXEC` ends the watch, see dispatch).
    pub(super) fn lost_step(&mut self, cmd: &Descriptor, args: &dyn ArgList) -> Option<Vec<u8>> {
        let lost = self.lost.as_mut()?;
        let answered = match &self.mode {
            // (A connection of the session's own under a lost WATCH: one
            // `CLIENT TRACKING ON` opened since, with nothing watched there.)
            Mode::Shared | Mode::Private(_) => true,
            Mode::Subscribed(_) => self.state.resp3,
            _ => false,
        };
        if !answered || matches!(cmd.route, Route::Reset | Route::Quit) {
            return None;
        }
        let multi = lost.multi;
        let name = cmd.info.map_or("", |i| i.name);
        if cmd.tx == TxOp::Abort {
            // Refused for its arity, in MULTI or not; it ends the transaction.
            self.lost = None;
            self.publish();
            return Some(local::EXEC_ABORT_ARITY.to_vec());
        }
        if let Some(info) = cmd.info.filter(|i| !arity_allows(i.arity, args.count())) {
            if !multi && cmd.tx == TxOp::None {
                return None;
            }
            // Redis checks the arity first; inside MULTI it aborts the transaction.
            lost.dirty |= multi;
            return Some(local::arity_error(args, info.name.contains('|')));
        }
        let reply: &[u8] = match cmd.tx {
            TxOp::Multi if multi => b"-ERR MULTI calls can not be nested\r\n",
            TxOp::Multi => {
                lost.multi = true;
                self.publish();
                b"+OK\r\n"
            }
            TxOp::Watch if multi => b"-ERR WATCH inside MULTI is not allowed\r\n",
            // More keys watched: the transaction fails all the same.
            TxOp::Watch => b"+OK\r\n",
            TxOp::Unwatch if !multi => {
                self.lost = None;
                b"+OK\r\n"
            }
            TxOp::End if !multi => end_refusal(name),
            TxOp::End => {
                let dirty = lost.dirty;
                self.lost = None;
                self.publish();
                match (name, dirty, self.state.resp3) {
                    ("exec", true, _) => {
                        b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                    }
                    ("exec", false, true) => b"_\r\n",
                    ("exec", false, false) => b"*-1\r\n",
                    _ => b"+OK\r\n",
                }
            }
            _ if !multi => return None,
            _ => {
                let refusal = match cmd.info {
                    None => prefix::unknown(cmd, args, &self.state.db.config.upstream.endpoint)
                        .map(|t| {
                            let mut out = Vec::new();
                            reply::error(&mut out, &t);
                            out
                        }),
                    Some(i) if i.has(table::NO_MULTI) => {
                        Some(b"-ERR Command not allowed inside a transaction\r\n".to_vec())
                    }
                    Some(_) => None,
                };
                return Some(match refusal {
                    Some(out) => {
                        lost.dirty = true;
                        out
                    }
                    None => b"+QUEUED\r\n".to_vec(),
                });
            }
        };
        Some(reply.to_vec())
    }

    /// Inside MULTI, a command the proxy answers itself (CLIENT SETNAME, AUTH,
    /// PROXY INFO …) is queued as Redis queues every command there: `+QUEUED`, and
    /// it runs if EXEC runs the transaction ([`Session::splice_exec`]). As Redis,
    /// a wrong number of arguments is refused at once, and so is what the proxy
    /// cannot run at EXEC (CLIENT REPLY, CLIENT UNBLOCK, PROXY RELOAD/CHECK); both
    /// abort the transaction. `false`: not such a request (it goes on as outside
    /// MULTI: forwarded, which Redis queues, or answered, errors aborting).
    pub(super) fn queue_in_multi(&mut self, cmd: &Descriptor, args: &dyn ArgList) -> bool {
        if !self.mode.in_multi() || !self.state.authenticated {
            return false;
        }
        let mut buf = [0u8; 32];
        let sub = match args.count() {
            1 => &b""[..],
            _ => upper(args.arg(1), &mut buf).unwrap_or(b"?"),
        };
        // Some(arity): queued if it has that many arguments (Redis's notation);
        // None: refused.
        let arity = match cmd.route {
            // With tracking on, the tracking connection answers these (Redis
            // queues them there).
            Route::Client
                if self.tracking.is_some()
                    && matches!(sub, b"CACHING" | b"GETREDIR" | b"TRACKINGINFO") =>
            {
                return false
            }
            Route::Client => match sub {
                // Forwarded (Redis queues them), or refused by the tracking code.
                b"PAUSE" | b"UNPAUSE" | b"HELP" | b"TRACKING" => return false,
                b"REPLY" | b"UNBLOCK" => None,
                // Redis 7.2's, answered by the proxy for any upstream version.
                b"SETINFO" => Some(4),
                b"NO-TOUCH" => Some(3),
                // Unknown: refused at once (the error aborts the transaction).
                _ => match cmd.info {
                    // (An unknown subcommand is classified as its container.)
                    Some(i) if i.name.contains('|') || args.count() == 1 => Some(i.arity),
                    _ => return false,
                },
            },
            Route::Proxy => match sub {
                b"RELOAD" | b"CHECK" => None,
                _ => Some(-2),
            },
            // `auth_passthrough`: the login refuses it (see `log_in`).
            Route::Auth if self.live.config.auth_passthrough => return false,
            Route::Auth => Some(-2),
            _ => return false,
        };
        let n = args.count();
        let out = match arity {
            Some(a) if arity_allows(a, n) => {
                self.queue_local(cmd.route, args, None);
                return true;
            }
            Some(_) => local::arity_error(args, cmd.route != Route::Auth && n > 1),
            // Redis checks the number of arguments first.
            None if cmd
                .info
                .is_some_and(|i| i.name.contains('|') && !arity_allows(i.arity, n)) =>
            {
                local::arity_error(args, true)
            }
            None => {
                let mut out = Vec::new();
                reply::error(
                    &mut out,
                    &format!(
                        "ERR {} {} inside a transaction is not supported by redis-sidecar",
                        String::from_utf8_lossy(args.arg(0)).to_ascii_uppercase(),
                        String::from_utf8_lossy(sub)
                    ),
                );
                out
            }
        };
        self.push_reply(out);
        self.refused_in_multi();
        true
    }

    /// Queues a command the proxy answers itself inside MULTI (`reply`: its
    /// answer if already known) and answers `+QUEUED`.
    pub(super) fn queue_local(&mut self, route: Route, args: &dyn ArgList, reply: Option<Vec<u8>>) {
        if let Some(h) = self.mode.held_mut() {
            h.locals.push(Queued {
                after: h.queued,
                route,
                args: (0..args.count()).map(|i| args.arg(i).to_vec()).collect(),
                reply,
            });
        }
        self.push_reply(b"+QUEUED\r\n".to_vec());
    }

    /// EXEC's reply with the commands the proxy queued in the transaction run now
    /// (it ran: `*N`) and their replies put in their places among its elements, as
    /// Redis answers; `*-1`/`_` (a WATCH conflict) or an error (nothing ran) are
    /// passed on as they are, and the queued commands do not run.
    pub(super) fn splice_exec(&mut self, bytes: Bytes, locals: Vec<Queued>) -> Bytes {
        // RESP3 pushes (invalidations) may come first on the session's own connection.
        let Some(range) = reply::after_pushes(&bytes) else {
            return bytes;
        };
        let (at, frame) = (range.start, &bytes[range]);
        // `*N`: it ran (`*-1`, `_`: a WATCH conflict; an error: nothing ran).
        if frame.starts_with(b"*-") {
            return bytes;
        }
        let Some(elements) = merge::elements(frame) else {
            return bytes;
        };
        let failures = self.state.auth_failures;
        let mut close = false;
        let mut replies = Vec::with_capacity(locals.len());
        for q in locals {
            let after = q.after as usize;
            replies.push((after, self.run_queued(q, &mut close)));
        }
        self.publish();
        self.auth_pause_due |= self.state.auth_failures > failures;
        let extra: usize = replies.iter().map(|(_, r)| r.len()).sum();
        let mut out = Vec::with_capacity(bytes.len() + extra + 8);
        out.extend_from_slice(&bytes[..at]);
        reply::array_header(&mut out, elements.len() + replies.len());
        let mut next = replies.iter().peekable();
        for (i, e) in elements.iter().enumerate() {
            while let Some((_, r)) = next.next_if(|(after, _)| *after <= i) {
                out.extend_from_slice(r);
            }
            out.extend_from_slice(e);
        }
        for (_, r) in next {
            out.extend_from_slice(r);
        }
        out.extend_from_slice(&bytes[at + frame.len()..]);
        if close {
            // CLIENT KILL of the client itself: as Redis, after this reply.
            self.queue.push_back(Pending::Close);
            self.closing = true;
        }
        Bytes::from(out)
    }

    /// Runs a command the proxy queued in a transaction, now that EXEC ran the
    /// transaction: its reply (`close`: set when it closes the client, after
    /// EXEC's reply).
    pub(super) fn run_queued(&mut self, q: Queued, close: &mut bool) -> Vec<u8> {
        q.reply.unwrap_or_else(|| {
            let view = View::new(&self.ctx, &self.live);
            match local::handle(&mut self.state, &view, q.route, &q.args) {
                local::Outcome::Reply(r) => r,
                local::Outcome::Close(r) => {
                    *close = true;
                    r
                }
                _ => NOT_RUN_BY_EXEC.to_vec(),
            }
        })
    }

    /// The settings for this session's own upstream connections to `db`
    /// (subscriber, private, out of band): the database's, logged in as the
    /// session's user when it authenticated through to Redis.
    pub(super) fn upstream_cfg(&self, db: &Database) -> UpstreamConfig {
        // On a cluster: the node for what does not route by slot (subscribers,
        // out-of-band requests, private connections): `Cluster::home`.
        let cfg = match db.cluster() {
            Some(c) => c.home_config(),
            None => db.config.upstream.clone(),
        };
        self.as_login(cfg)
    }

    /// `cfg` logged in as the session's `auth_passthrough` login, if any.
    pub(super) fn as_login(&self, mut cfg: UpstreamConfig) -> UpstreamConfig {
        if let Some(login) = &self.login {
            cfg.username.clone_from(&login.user);
            cfg.password = Some(login.password.clone());
            cfg.client_login = true;
        }
        cfg
    }

    /// `auth_passthrough`: opens a connection to the current database's server
    /// logged in with `creds`. On success it becomes the session's private
    /// connection (every later request goes there); on failure the reply is
    /// Redis's own error (`-WRONGPASS …`), and the session keeps its login.
    pub(super) async fn log_in(&mut self, creds: local::Credentials) -> Result<(), Vec<u8>> {
        if matches!(self.mode, Mode::Exclusive(_)) || self.mode.in_multi() || self.lost.is_some() {
            return Err(
                b"-ERR AUTH inside a transaction is not supported by redis-sidecar\r\n".to_vec(),
            );
        }
        let resp3 = creds.resp3;
        let login = self.login_of(creds)?;
        let previous = self.login.replace(login);
        match self.open_private(resp3).await {
            Ok(()) => {
                if let Some(login) = self.login.take() {
                    self.logged_in(login);
                }
                Ok(())
            }
            Err(e) => {
                self.login = previous;
                Err(e)
            }
        }
    }

    /// Whether an `AUTH` (`auth_passthrough`) is sent on the session's own
    /// connection, as on Redis, where a client logs in again on its connection
    /// (keeping its database, its tracking, its `WATCH`): a connection of its own
    /// to a standalone server, outside a transaction. (Opening a new one instead
    /// would need the proxy's credentials to select the database for a user that
    /// may not, and fails once the client has turned the proxy's user off.)
    pub(super) fn logs_in_place(&self) -> bool {
        matches!(&self.mode, Mode::Private(p) if !p.held.in_multi && p.db.cluster().is_none())
            && self.lost.is_none()
    }

    /// `AUTH` sent on the session's own connection ([`Session::logs_in_place`]):
    /// Redis's reply reaches the client, and on `+OK` the session is logged in as
    /// `creds` ([`Hook::Login`]); on a refusal it keeps its login, as on Redis.
    pub(super) async fn log_in_place(
        &mut self,
        creds: local::Credentials,
        bytes: Vec<u8>,
        cmd: u16,
    ) {
        match self.login_of(creds) {
            Ok(login) => {
                self.forward(bytes, Target::Held, cmd, Some(Hook::Login(Box::new(login))))
                    .await
            }
            Err(refused) => self.push_reply(refused),
        }
    }

    /// The login `creds` name, numbered; a user name or password that is not
    /// UTF-8 gets Redis's refusal for credentials that match no user.
    fn login_of(&mut self, creds: local::Credentials) -> Result<Login, Vec<u8>> {
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| ());
        let (Ok(user), Ok(password)) = (creds.user.map(text).transpose(), text(creds.password))
        else {
            return Err(
                b"-WRONGPASS invalid username-password pair or user is disabled.\r\n".to_vec(),
            );
        };
        self.checkouts += 1;
        Ok(Login {
            user,
            password: Secret(password),
            view: None,
            id: self.checkouts,
        })
    }

    /// Redis accepted `login`: the session is logged in as its user.
    pub(super) fn logged_in(&mut self, login: Login) {
        self.state.user = Some(login.user.clone().unwrap_or_else(|| "default".into()));
        self.state.authenticated = true;
        self.login = Some(login);
        self.publish();
    }

    /// Opens a connection logged in as `self.login` to the current database and
    /// makes it the session's private connection (replacing any before it). On a
    /// cluster, only checks the login on the home node: the session's requests
    /// then go by slot over the login's own connections ([`Session::login_view`]),
    /// and it holds no private connection.
    ///
    /// A login whose connection may not `SELECT` its database (`-NOPERM` in the
    /// setup, a standalone database other than 0) gets one that selects it with
    /// the proxy's own credentials and only then logs in (`AUTH`): as on Redis,
    /// where a connection keeps across `AUTH` the database selected before.
    pub(super) async fn open_private(&mut self, resp3: bool) -> Result<(), Vec<u8>> {
        let db = self.state.db.clone();
        let mut opened = ExclusiveConn::open_own(&self.upstream_cfg(&db), resp3).await;
        let may_not_select = matches!(&opened, Err(UpstreamError::Handshake { reply, .. })
            if reply.starts_with("NOPERM") && db.config.upstream.db != 0);
        let login = self.login.as_ref();
        if let Some(login) = login.filter(|_| may_not_select && db.cluster().is_none()) {
            let mut auth = Vec::new();
            encode_auth(login.user.as_deref(), login.password.expose(), &mut auth);
            opened = ExclusiveConn::open_own_then_auth(&db.config.upstream, resp3, &auth).await;
        }
        match opened {
            Ok(_) if db.cluster().is_some() => {
                if matches!(self.mode, Mode::Private(_)) {
                    self.release(false);
                }
                Ok(())
            }
            Ok(conn) => {
                let conn = self.own_dedicated(conn, &db);
                self.hold_private(conn, db, resp3);
                Ok(())
            }
            Err(UpstreamError::Handshake { reply, .. }) => {
                let mut out = Vec::new();
                reply::error(&mut out, &reply);
                Err(out)
            }
            Err(e) => {
                let mut out = Vec::new();
                reply::error(&mut out, &error_text(&db, &e, 1));
                Err(out)
            }
        }
    }

    /// `conn`, served as the session's own connection on `db`.
    fn own_dedicated(&self, conn: ExclusiveConn, db: &Database) -> Dedicated {
        Dedicated::private(
            conn,
            db.label(),
            db.config.upstream.command_timeout,
            self.live.config.limits.pubsub_buffer_limit,
        )
    }

    /// Under a `WATCH` (outside `MULTI`, on a standalone server), Exclusive →
    /// Private: the pooled connection that watches is taken out of the pool and
    /// becomes the session's own, watch and all, so that what needs a connection
    /// of the client's own (`CLIENT TRACKING ON`, `HELLO`, a subscription) runs
    /// where the watch is, as on Redis's one connection. Waits for the replies
    /// sent there before. Anything else: nothing to do.
    pub(super) async fn owns_watch(&mut self) -> Result<(), Vec<u8>> {
        let db = self.state.db.clone();
        let detached = match &mut self.mode {
            Mode::Exclusive(Held {
                conn: HeldConn::Direct(d),
                watching: true,
                in_multi: false,
                ..
            }) if db.cluster().is_none() => d.detach().await,
            _ => return Ok(()),
        };
        match detached {
            Ok(conn) => {
                let conn = self.own_dedicated(conn, &db);
                self.own_held(conn, db);
                Ok(())
            }
            Err(e) => {
                let mut out = Vec::new();
                reply::error(&mut out, &error_text(&db, &e, 1));
                Err(out)
            }
        }
    }

    /// A RESP3 session whose `auth_passthrough` login connection watches keys:
    /// its subscriber connection would be another one (the login's stays apart,
    /// parked), so a transaction it ran while subscribed would not be watched.
    pub(super) fn login_watch_apart(&self) -> bool {
        self.login.is_some()
            && self.state.resp3
            && matches!(&self.mode, Mode::Private(p) if p.held.watching)
    }

    /// The cluster as the session's login sees it, on a cluster database with
    /// an `auth_passthrough` login (`None` otherwise).
    pub(super) fn login_view(&mut self) -> Option<Arc<Cluster>> {
        let db = self.state.db.clone();
        let cluster = db.cluster()?;
        let login = self.login.as_mut()?;
        match &login.view {
            Some(v) if v.is_view_of(cluster) => Some(v.clone()),
            _ => {
                let v = cluster.login(login.user.clone(), login.password.clone());
                login.view = Some(v.clone());
                Some(v)
            }
        }
    }

    /// Whether the session's shared connection is held up (`Database::detour`;
    /// an `auth_passthrough` login on a cluster: its own connections').
    pub(super) fn held_up(&mut self) -> bool {
        let (id, resp3) = (self.state.id, self.state.resp3);
        if self.login.is_some() && self.state.db.cluster().is_some() {
            return self.login_view().is_some_and(|v| v.detour(id, resp3));
        }
        self.state.db.detour(id, resp3)
    }

    /// After a local command: a private connection must speak the session's
    /// protocol and live on its database's server; if not, it is opened again
    /// (and a login on a cluster database that SELECTs a standalone one gets one).
    /// `Err` closes the client (its own connection to Redis is gone).
    pub(super) async fn follow_private(&mut self) -> Result<(), Vec<u8>> {
        let stale = match &self.mode {
            Mode::Private(p) => !p.db.same_server(&self.state.db) || p.resp3 != self.state.resp3,
            Mode::Shared => self.login.is_some() && self.state.db.cluster().is_none(),
            _ => false,
        };
        // Its state goes with it: tracking, or a WATCH (on the same server).
        let watching = matches!(&self.mode,
            Mode::Private(p) if p.held.watching && p.db.same_server(&self.state.db));
        if stale && (self.tracking.is_some() || watching) {
            return self.tracking_switch_protocol().await;
        }
        if stale {
            let resp3 = self.state.resp3;
            self.open_private(resp3).await?;
        }
        Ok(())
    }
}

/// What EXEC gives for a queued command of the proxy's whose reply comes later
/// (`CLIENT KILL USER` asking Redis whether the user exists).
const NOT_RUN_BY_EXEC: &[u8] =
    b"-ERR this command inside a transaction is not supported by redis-sidecar\r\n";
