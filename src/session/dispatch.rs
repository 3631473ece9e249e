//! Parsing what the client sent and deciding, request by request, where it goes.
//!
//! Each request is classified once into a [`Descriptor`]. Consecutive requests for
//! the same connection join a [`Run`], sent upstream as one batch that is a slice
//! of the read buffer (no copy); anything else ends the run first. A request for a
//! different connection than the previous one waits (the session *stalls*) until
//! every earlier reply has arrived: one rule, in [`Session::dispatch`], keeps a
//! client's commands in the order it sent them across connections.

use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::local;
use super::mode::{Conn, Mode, MonitorEnd, Queued};
use super::prefix;
use super::pubsub::unsubscribed;
use super::queue::{error_text, errors, CmdList, Pending, Sent};
use super::Session;
use crate::clients::Exclusive;
use crate::cluster::client::Via;
use crate::command::{self, ArgList, Block, Descriptor, Family, Ranged, Route, TxOp};
use crate::context::View;
use crate::protocol::reply;
use crate::protocol::request::{self, encode_command, RequestKind};
use crate::router::Database;
use crate::stats;
use crate::upstream::mux::{Answer, Batch, Retry};
use crate::upstream::oob;
use crate::upstream::UpstreamError;

/// What [`Session::deferred_step`] did with a request.
enum Deferred {
    /// Answered (the request is consumed).
    Answered,
    /// It waits for earlier replies.
    Stall,
    /// The transaction is open on its node; the request goes on as usual.
    Go,
}

/// Which kind of upstream connection a batch goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Target {
    /// The database's shared, multiplexed connection.
    Shared,
    /// The session's exclusive or private connection.
    Held,
}

/// Requests on their way upstream as one batch.
pub(super) struct Outgoing {
    pub bytes: Bytes,
    pub count: u32,
    pub target: Target,
    pub cmds: CmdList,
    /// Every command is read-only (may be retried after a lost reply).
    pub readonly: bool,
    /// A blocking command's own timeout (it travels alone).
    pub block: Block,
    /// CLIENT REPLY SKIP: the client gets no reply for it.
    pub silent: bool,
    /// An EXEC (or a SELECT on the held connection) that switches the session to
    /// this database if it runs.
    pub select_after: Option<Arc<Database>>,
}

impl Outgoing {
    /// One request, alone.
    fn one(bytes: Bytes, target: Target, cmd: u16, readonly: bool) -> Outgoing {
        let mut cmds = CmdList::new();
        cmds.push(cmd);
        Outgoing {
            bytes,
            count: 1,
            target,
            cmds,
            readonly,
            block: Block::No,
            silent: false,
            select_after: None,
        }
    }
}

/// The run of consecutive requests being built: the first `len` bytes of the read
/// buffer, holding `count` requests for `target`.
struct Run {
    len: usize,
    count: u32,
    target: Target,
    cmds: CmdList,
    readonly: bool,
    block: Block,
    silent: bool,
    select_after: Option<Arc<Database>>,
    /// `key_prefix`: the requests as rewritten, sent instead of the `len` bytes
    /// they replace (every request of such a run is here).
    owned: Option<BytesMut>,
}

impl Run {
    fn new() -> Run {
        Run {
            len: 0,
            count: 0,
            target: Target::Shared,
            cmds: CmdList::new(),
            readonly: true,
            block: Block::No,
            silent: false,
            select_after: None,
            owned: None,
        }
    }

    /// Adds a complete multibulk request of `len` bytes (`owned`: sent as these
    /// bytes instead).
    #[inline]
    fn push(&mut self, len: usize, cmd: &Descriptor, owned: Option<&[u8]>) {
        // A run's requests are all rewritten or none (the database, and so its
        // prefix, changes only between runs).
        if let Some(bytes) = owned {
            debug_assert!(self.count == 0 || self.owned.is_some());
            self.owned
                .get_or_insert_with(BytesMut::new)
                .extend_from_slice(bytes);
        } else {
            debug_assert!(self.owned.is_none());
        }
        self.len += len;
        self.count += 1;
        self.cmds.push(cmd.index());
        self.readonly &= cmd.readonly();
    }

    /// Takes the run's bytes off the front of `inbuf`, as a batch unless it holds
    /// no request (only empty lines), and starts a new run.
    fn take(&mut self, inbuf: &mut BytesMut) -> Option<Outgoing> {
        let bytes = match self.owned.take() {
            Some(owned) => {
                inbuf.advance(self.len);
                owned.freeze()
            }
            None => split_front(inbuf, self.len),
        };
        let run = std::mem::replace(self, Run::new());
        (run.count > 0).then_some(Outgoing {
            bytes,
            count: run.count,
            target: run.target,
            cmds: run.cmds,
            readonly: run.readonly,
            block: run.block,
            silent: run.silent,
            select_after: run.select_after,
        })
    }
}

/// Redis's refusal of a command other than the pub/sub ones to a RESP2
/// subscriber (`name` as Redis names it: `blpop`, `client|setname`).
fn not_in_pubsub_context(name: &str) -> String {
    let refusal = format!("Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context");
    match name {
        // Redis refuses EXEC so, in or out of MULTI.
        "exec" => format!("EXECABORT Transaction discarded because of: {refusal}"),
        _ => format!("ERR {refusal}"),
    }
}

/// On a cluster, points `cfg` at the primary serving a sharded subscription's
/// channel (`SSUBSCRIBE`), and says so; other subscriptions stay on the
/// cluster's home node (Redis Cluster broadcasts `PUBLISH` to every node).
fn shard_node(
    db: &Database,
    cmd: &Descriptor,
    args: &dyn ArgList,
    cfg: &mut crate::config::UpstreamConfig,
) -> bool {
    let prefix = db.config.upstream.key_prefix.as_deref();
    let slot = crate::cluster::plan::slot_of(cmd.info, args, prefix);
    let (Some(cluster), Some(slot)) = (db.cluster(), slot) else {
        return false;
    };
    let Some(topo) = cluster.topology() else {
        return false;
    };
    let addr = topo.map.shard(slot).map(|s| s.primary.addr.as_str());
    let Some((host, port)) = addr.and_then(crate::cluster::map::split_addr) else {
        return false;
    };
    cfg.host = host;
    cfg.port = port;
    true
}

/// Calls `f` with the arguments of `req`, the request at the start of `buf`
/// (`ranges`: where the parser found them; an inline request has its own).
fn with_args<R>(
    buf: &[u8],
    ranges: &[std::ops::Range<usize>],
    req: &request::Request,
    f: impl FnOnce(&dyn ArgList) -> R,
) -> R {
    match &req.kind {
        RequestKind::Inline(a) => f(a),
        _ => f(&Ranged { buf, ranges }),
    }
}

/// The bytes of a request to send upstream: a slice of the buffer for multibulk,
/// re-encoded for inline. Consumes it from `inbuf`.
fn take_request(inbuf: &mut BytesMut, req: &request::Request) -> Bytes {
    match &req.kind {
        RequestKind::Inline(args) => {
            inbuf.advance(req.len);
            encode(&args[..]).into()
        }
        _ => split_front(inbuf, req.len),
    }
}

/// The first `n` bytes of `inbuf`, taken off it. All of them (the common case: the
/// buffer is allocated to the size of what was read) are taken whole, with no
/// second allocation, and leave `inbuf` with no memory.
fn split_front(inbuf: &mut BytesMut, n: usize) -> Bytes {
    if n == inbuf.len() {
        std::mem::take(inbuf).freeze()
    } else {
        inbuf.split_to(n).freeze()
    }
}

/// [`take_request`], or `owned` (the request as `key_prefix` rewrote it) in its
/// place.
fn take_owned(inbuf: &mut BytesMut, req: &request::Request, owned: Option<Vec<u8>>) -> Bytes {
    match owned {
        Some(b) => {
            inbuf.advance(req.len);
            Bytes::from(b)
        }
        None => take_request(inbuf, req),
    }
}

impl Session {
    /// One request of the client's, alone: a pending `CLIENT REPLY SKIP` is used
    /// up by it (its reply dropped), as by any request Redis runs.
    fn client_request(
        &mut self,
        bytes: Bytes,
        target: Target,
        cmd: u16,
        readonly: bool,
    ) -> Outgoing {
        let mut out = Outgoing::one(bytes, target, cmd, readonly);
        out.silent = std::mem::take(&mut self.skip_next);
        out
    }

    /// Sends what the run holds and starts a new one.
    async fn flush(&mut self, run: &mut Run, inbuf: &mut BytesMut) {
        if let Some(out) = run.take(inbuf) {
            let db = self.state.db.clone();
            self.send(db, out).await;
        }
    }

    /// Sends a batch to `db` on the shared slot or the session's held connection —
    /// unless the database's circuit breaker is open — and queues its reply slot.
    pub(super) async fn send(&mut self, db: Arc<Database>, out: Outgoing) {
        let order = &self.ctx.publish_order;
        if order.busy() {
            // After other clients' subscriptions begun before it (`publish_order`):
            // a PUBLISH, and a write while keyspace notifications are subscribed.
            let publishes = out.cmds.iter().any(|&c| command::publishes(c));
            if publishes || (order.keyspace_busy() && !out.readonly) {
                let u = &db.config.upstream;
                let bound = u.connect_timeout + u.command_timeout;
                order.after_subscriptions(!publishes, bound).await;
            }
        }
        let silent = out.silent || self.reply_off;
        if let Err(rejected) = db.breaker.check() {
            for &c in &out.cmds {
                db.commands.record_rejected(c as usize);
            }
            let err = UpstreamError::CircuitOpen {
                retry_in: rejected.retry_in,
            };
            if !silent {
                let bytes = errors(out.count, &error_text(&db, &err, 0));
                self.queue.push_back(Pending::Ready(bytes));
            }
            if out.target == Target::Held && !self.mode.is_private() {
                // The transaction cannot go on: its connection is let go, and a
                // transaction the client knows of is lost (`lose_held`).
                self.lose_held(false);
            }
            return;
        }
        stats::add(&db.stats.commands, out.count as u64);
        let (tx, rx) = oneshot::channel();
        let batch = Batch {
            bytes: out.bytes,
            count: out.count,
            reply: tx,
            block: out.block,
            retry: Retry::new(self.state.id, out.readonly, &db.config.upstream),
            divert: None,
            may_hold: out.cmds.iter().any(|&c| command::may_be_held(c)),
        };
        let held = match (out.target, self.mode.held_mut()) {
            (Target::Held, Some(h)) => Some(h),
            _ => None,
        };
        let mut multi_before = false;
        let shared = match held {
            Some(h) => {
                multi_before = std::mem::replace(&mut h.sent_multi, h.in_multi);
                if out.block != Block::No {
                    // CLIENT UNBLOCK from another client reaches this connection.
                    self.client.set_blocked(Some(Exclusive {
                        db: db.clone(),
                        upstream_id: h.conn.upstream_id(),
                        moving: h.conn.located(),
                    }));
                }
                // Pushes (tracking invalidations) Redis sent before this batch's
                // replies are written before them.
                for push in h.conn.send(batch) {
                    self.queue.push_back(Pending::Ready(push));
                }
                false
            }
            None => {
                match self.login_view() {
                    // An `auth_passthrough` login on a cluster: its own connections.
                    Some(view) => {
                        let via = Via {
                            session: self.state.id,
                            resp3: self.state.resp3,
                            detour: self.detour,
                        };
                        Box::pin(view.send(via, batch)).await
                    }
                    None => {
                        db.send_shared(self.state.id, self.state.resp3, self.detour, batch)
                            .await
                    }
                }
                true
            }
        };
        self.awaiting_exec = out.select_after.is_some();
        let flight = self.depart(out.count, out.readonly);
        self.queue.push_back(Pending::Upstream(Sent {
            flight,
            rx,
            count: out.count,
            db,
            started: Instant::now(),
            cmds: out.cmds,
            shared,
            silent,
            select_after: out.select_after,
            hook: None,
            unprefix: None,
            pause_noted: None,
            splice: None,
            multi_before,
        }));
    }

    /// Queues the answer `rx` of one request that Redis runs even while busy
    /// (SCRIPT KILL …), sent at once on a connection of its own to `db`'s server
    /// (`oob`), bypassing the breaker; its reply keeps its place.
    fn out_of_band(&mut self, db: Arc<Database>, rx: oneshot::Receiver<Answer>, cmd: u16) {
        stats::add(&db.stats.commands, 1);
        let silent = self.reply_off || std::mem::take(&mut self.skip_next);
        let mut cmds = CmdList::new();
        cmds.push(cmd);
        let flight = self.depart(1, false);
        self.queue.push_back(Pending::Upstream(Sent {
            flight,
            rx,
            count: 1,
            db,
            started: Instant::now(),
            cmds,
            shared: true,
            silent,
            select_after: None,
            hook: None,
            unprefix: None,
            pause_noted: None,
            splice: None,
            multi_before: false,
        }));
    }

    /// No state that changes where a forwardable command goes: authenticated, on
    /// the shared connection (as was the previous request), no CLIENT REPLY SKIP
    /// pending, no EXEC that may switch the database in flight.
    #[inline]
    fn plain(&self) -> bool {
        self.state.authenticated
            && matches!(self.mode, Mode::Shared)
            && !self.skip_next
            && !self.awaiting_exec
            && (self.last == self.shared_conn() || self.last == Conn::None)
    }

    /// How long writes stay paused on the session's server, if `cmd` is one that
    /// Redis holds back then and would go on the shared connection.
    #[inline]
    fn paused_write(&self, cmd: &Descriptor) -> Option<std::time::Duration> {
        let left = self.state.db.config.upstream.endpoint.writes_paused()?;
        (cmd.pausable() && self.state.authenticated && matches!(self.mode, Mode::Shared))
            .then_some(left)
    }

    /// Where a request goes, if upstream: `None` means the proxy answers it.
    fn target(&self, route: Route) -> Option<Target> {
        if !self.state.authenticated {
            return None;
        }
        match route {
            // On a cluster, WATCH pins a connection to its key's node; until
            // MULTI, other commands go by their own keys (their slot may be
            // another node's), as they would outside: WATCH is about what any
            // connection changes, the client's own included.
            Route::Forward
                if matches!(&self.mode, Mode::Exclusive(h) if !h.in_multi)
                    && self.state.db.cluster().is_some() =>
            {
                Some(Target::Shared)
            }
            Route::Forward if self.mode.held().is_some() => Some(Target::Held),
            Route::Forward => Some(Target::Shared),
            Route::Stateful(Family::Transaction | Family::Blocking) => Some(Target::Held),
            // UNSUBSCRIBE … inside MULTI: queued (it runs at EXEC, on a connection
            // that subscribes to nothing).
            Route::Stateful(Family::PubSub) if self.mode.in_multi() => Some(Target::Held),
            _ => None,
        }
    }

    /// Redis's refusal of an EXEC or DISCARD (of the right arity) sent outside
    /// MULTI by a session on the shared connections or a private one (tracking,
    /// an `auth_passthrough` login), which Redis answers without running
    /// anything; so too an EXEC with arguments ([`TxOp::Abort`]) where no WATCH
    /// is in force. (Under a WATCH on an exclusive connection an EXEC is sent:
    /// the answer then says whether the WATCH is lost, see `ended_all_the_same`;
    /// an EXEC with arguments there sends UNWATCH, see `aborts` in dispatch.)
    fn end_without_multi(&self, cmd: &Descriptor) -> Option<&'static [u8]> {
        if !matches!(cmd.tx, TxOp::End | TxOp::Abort) || !self.state.authenticated {
            return None;
        }
        let outside = match &self.mode {
            // (A lost or deferred transaction was answered before this.)
            Mode::Shared => true,
            Mode::Private(p) => !p.held.in_multi && (cmd.tx == TxOp::End || !p.held.watching),
            _ => false,
        };
        let info = cmd.info.filter(|_| outside)?;
        Some(match cmd.tx {
            TxOp::Abort => super::local::EXEC_ABORT_ARITY,
            _ => super::exclusive::end_refusal(info.name),
        })
    }

    /// Whether the request is a MULTI, DISCARD, WATCH or UNWATCH with a wrong
    /// number of arguments (their [`TxOp::None`]), which Redis refuses without
    /// changing anything on the connection: answered here with Redis's refusal,
    /// in or out of MULTI (where it aborts the transaction at EXEC, as on
    /// Redis), so that no connection is taken for it and the answer holds
    /// whatever becomes of one. (A subscriber's goes to its connection, whose
    /// transaction Redis keeps.)
    fn arity_refused(&self, cmd: &Descriptor) -> bool {
        self.state.authenticated
            && cmd.tx == TxOp::None
            && cmd.route == Route::Stateful(Family::Transaction)
            && !matches!(self.mode, Mode::Subscribed(_))
    }

    /// The connection a request for `target` would use.
    fn conn_for(&self, target: Target) -> Conn {
        match (target, self.mode.held()) {
            (Target::Held, Some(h)) => Conn::Held(h.id),
            // A new exclusive connection.
            (Target::Held, None) => Conn::Held(self.checkouts + 1),
            (Target::Shared, _) => self.shared_conn(),
        }
    }

    /// On a cluster: the slot an exclusive connection is pinned to, from the
    /// request at the start of `buf` (a blocking command, WATCH), or for MULTI
    /// from the first keyed request queued after it that has already arrived
    /// (pipelining clients send the whole transaction at once). `None`: any node.
    fn pin_slot(&self, buf: &[u8], req: &request::Request, cmd: &Descriptor) -> Option<u16> {
        let prefix = self.state.db.config.upstream.key_prefix.as_deref();
        let slot = with_args(buf, &self.args, req, |args| {
            crate::cluster::plan::slot_of(cmd.info, args, prefix)
        });
        if slot.is_some() {
            return slot;
        }
        if cmd.tx != TxOp::Multi {
            return None;
        }
        let mut at = req.len;
        let mut ranges = Vec::new();
        let limits = &self.live.config.limits;
        for _ in 0..64 {
            let next = match request::parse(&buf[at..], limits, &mut ranges) {
                Ok(Some(r)) => r,
                _ => return None,
            };
            let args = Ranged {
                buf: &buf[at..],
                ranges: &ranges,
            };
            let d = Descriptor::of(&args);
            if matches!(d.tx, TxOp::End | TxOp::Abort) {
                return None;
            }
            if let Some(s) = crate::cluster::plan::slot_of(d.info, &args, prefix) {
                return Some(s);
            }
            at += next.len;
        }
        None
    }

    /// Whether a forwarded request of a subscribed session goes the way it goes
    /// unsubscribed rather than to the subscriber connection (RESP3, not
    /// MONITOR): on a cluster (by the slot of its keys, or to every primary for
    /// `DBSIZE`, `KEYS`, `SCAN` …; the subscriber connection is on one node), and
    /// after a SELECT of another database than the one the subscriber
    /// connection was opened for (which may be another server). A RESP3
    /// subscriber may send any command, as on Redis.
    fn routed_while_subscribed(&self) -> bool {
        // (Inside a MULTI sent on the subscriber connection, Redis queues them
        // there.)
        self.state.resp3
            && !self.multi_while_subscribed()
            && matches!(&self.mode, Mode::Subscribed(s) if !s.monitor
                && (self.state.db.cluster().is_some() || s.db != self.state.db.config.index))
    }

    /// A RESP3 subscriber's `PUBLISH` on a cluster database (the one its
    /// subscriptions are on), or its `SPUBLISH` of a channel whose slot the
    /// subscriber connection's node serves: sent on the subscriber connection,
    /// so that a message it gets itself comes before the reply, as on Redis's one
    /// connection (sent by slot, on another connection, the two raced: until
    /// session 40 the reply often came first). `PUBLISH` reaches the whole
    /// cluster from any node.
    fn publishes_on_subscriber(
        &self,
        buf: &[u8],
        req: &request::Request,
        cmd: &Descriptor,
    ) -> bool {
        let Mode::Subscribed(s) = &self.mode else {
            return false;
        };
        let db = &self.state.db;
        let Some(info) = cmd.info else {
            return false;
        };
        if db.cluster().is_none()
            || s.db != db.config.index
            || !matches!(info.name, "publish" | "spublish")
        {
            return false;
        }
        with_args(buf, &self.args, req, |args| {
            if !crate::command::arity_allows(info.arity, args.count()) {
                return false;
            }
            info.name == "publish"
                || self
                    .shard_addr(cmd, args)
                    .is_some_and(|node| node == s.sub.addr())
        })
    }

    /// The `host:port` of the cluster node serving the slot of the shard channel
    /// `args` name (`SSUBSCRIBE`, `SPUBLISH`), if the map knows it.
    fn shard_addr(&self, cmd: &Descriptor, args: &dyn ArgList) -> Option<String> {
        let db = &self.state.db;
        let mut cfg = self.upstream_cfg(db);
        shard_node(db, cmd, args, &mut cfg).then(|| cfg.address())
    }

    /// What a subscribed session's request gets from the proxy instead of the
    /// subscriber connection:
    /// * in RESP3, `HELLO 2` is refused (the subscriber connection speaks RESP3);
    /// * on a cluster, whose nodes would answer `-MOVED` (a redirect a client of a
    ///   standalone server cannot follow): in RESP2, a command Redis does not allow
    ///   while subscribed gets Redis's own refusal (a node checks the key's slot
    ///   first); an `SSUBSCRIBE` of a channel whose slot another node serves than
    ///   the one the session's subscriptions are on is refused, naming both (one
    ///   connection subscribes on one node).
    fn subscribed_refusal(
        &self,
        buf: &[u8],
        req: &request::Request,
        cmd: &Descriptor,
    ) -> Option<String> {
        let Mode::Subscribed(s) = &self.mode else {
            return None;
        };
        if s.monitor {
            return None;
        }
        // (RESP3: a RESP2 subscriber cannot SELECT, unless it switched with
        // `HELLO 2` after one; Redis then refuses what is not pub/sub.)
        let other_db = self.state.resp3 && s.db != self.state.db.config.index;
        // (Redis checks the arity first: a wrong one gets its refusal as usual.)
        let arity_ok = || {
            cmd.info.is_none_or(|i| {
                with_args(buf, &self.args, req, |args| {
                    crate::command::arity_allows(i.arity, args.count())
                })
            })
        };
        if other_db
            // (UNWATCH, EXEC and DISCARD change nothing there: no transaction
            // began on it after the SELECT.)
            && !matches!(cmd.tx, TxOp::Unwatch | TxOp::End | TxOp::Abort)
            // (WAIT is about replicas, not a database.)
            && cmd.info.is_none_or(|i| i.name != "wait")
            && matches!(
                cmd.route,
                Route::Stateful(Family::Transaction | Family::Blocking)
            )
            && arity_ok()
        {
            let name = cmd.info.map_or("?", |i| i.name).to_ascii_uppercase();
            return Some(format!(
                "ERR {name} while subscribed, after a SELECT of another database than the subscriptions' (db {db}), is not supported by redis-sidecar: SELECT {db} or unsubscribe first",
                db = s.db
            ));
        }
        with_args(buf, &self.args, req, |args| {
            if self.resp2_while_subscribed(s, cmd, args) == Some(false) {
                return Some("ERR HELLO 2 while subscribed is not supported by redis-sidecar here (a transaction on the subscriber connection, a tracking or login connection, a cluster, or HELLO's AUTH): unsubscribe first".to_string());
            }
            self.cluster_refusal_while_subscribed(s, cmd, args)
        })
    }

    /// A RESP3 subscriber's `SELECT` of another database on the same server, with
    /// the same credentials and key prefix, and no transaction on the subscriber
    /// connection: the database's index and the `SELECT` that moves the subscriber
    /// connection there too (`pubsub::subscriber_select`), so that its later
    /// commands (a transaction, a blocking pop) run there, on that database, as
    /// on Redis. `None`: the `SELECT` is the session's only, and its commands go
    /// where they go unsubscribed (another server, a prefix, a cluster, a login,
    /// an index that is no database).
    fn subscriber_follows_select(
        &self,
        s: &super::mode::Subscribed,
        args: &dyn ArgList,
    ) -> Option<(u32, Vec<u8>)> {
        if s.tx.is_some() {
            return None;
        }
        self.select_on_subscriber(s, s.db, args)
            .filter(|(index, _)| *index != s.db)
    }

    /// A RESP3 subscriber's `SELECT` inside a transaction on its subscriber
    /// connection, of a database on the same server with the same credentials
    /// and key prefix as the one the transaction runs on (the connection's, or
    /// the last SELECT queued): the database's index and the SELECT Redis
    /// queues there. `None`: refused as before (another server, a prefix, a
    /// cluster, a login, an index that is no database).
    fn subscriber_select_queued(
        &self,
        s: &super::mode::Subscribed,
        args: &dyn ArgList,
    ) -> Option<(u32, Vec<u8>)> {
        let tx = s.tx.as_ref().filter(|t| t.in_multi())?;
        self.select_on_subscriber(s, tx.selected().unwrap_or(s.db), args)
    }

    /// Takes a request a database on a cluster answers as a standalone Redis
    /// does (`CLUSTER …`, `READONLY` …) off `inbuf` to queue in a transaction:
    /// its arguments, and the refusal that is its element of EXEC's reply.
    fn take_hidden_cluster(
        &self,
        inbuf: &mut BytesMut,
        req: &request::Request,
    ) -> (Vec<Vec<u8>>, Vec<u8>) {
        let args = with_args(&inbuf[..req.len], &self.args, req, |a| {
            (0..a.count()).map(|i| a.arg(i).to_vec()).collect()
        });
        inbuf.advance(req.len);
        let mut refusal = Vec::new();
        reply::error(&mut refusal, command::CLUSTER_DISABLED);
        (args, refusal)
    }

    /// A request the proxy answers itself, inside a RESP3 subscriber's
    /// transaction on its subscriber connection, that it queues there instead
    /// of refusing it: a `SELECT` of a database on the same server (the
    /// session's when EXEC runs the transaction, `pubsub::SubTx`), `CLIENT
    /// SETNAME|GETNAME|ID|INFO|SETINFO` (run at EXEC), `MOVE`/`COPY … DB`/`SWAPDB`
    /// of databases on the same server without a key prefix (indexes
    /// translated). Called inside such a transaction; `None`: refused.
    fn queued_in_subscribed_tx(&self, cmd: &Descriptor, a: &dyn ArgList) -> Option<InSubTx> {
        let Mode::Subscribed(s) = &self.mode else {
            return None;
        };
        let db = &self.state.db;
        match cmd.route {
            Route::Select => match self.subscriber_select_queued(s, a) {
                Some((index, select)) => Some(InSubTx::Select(index, select)),
                // A SELECT of no database (`SELECT 99`): queued by Redis, its error
                // is its element of EXEC's reply (as in any other MULTI).
                None => local::select_error(&View::new(&self.ctx, &self.live), a).map(|reply| {
                    InSubTx::Local(Queued {
                        after: 0,
                        route: cmd.route,
                        args: (0..a.count()).map(|i| a.arg(i).to_vec()).collect(),
                        reply: Some(reply),
                    })
                }),
            },
            Route::Client => queued_while_subscribed(a).then(|| {
                InSubTx::Local(Queued {
                    after: 0,
                    route: cmd.route,
                    args: (0..a.count()).map(|i| a.arg(i).to_vec()).collect(),
                    reply: None,
                })
            }),
            Route::CrossDb if db.config.upstream.key_prefix.is_none() && db.cluster().is_none() => {
                let view = View::new(&self.ctx, &self.live);
                local::cross_db_request(&self.state, &view, a).map(InSubTx::Raw)
            }
            _ => None,
        }
    }

    /// A RESP3 subscriber's `SELECT` that the subscriber connection, on the
    /// database `on`, can run too: a database on the same server with the same
    /// credentials and key prefix, no cluster, no login of the session's own.
    /// Its index and the `SELECT` of its upstream db.
    fn select_on_subscriber(
        &self,
        s: &super::mode::Subscribed,
        on: u32,
        args: &dyn ArgList,
    ) -> Option<(u32, Vec<u8>)> {
        if !self.state.resp3 || s.monitor || self.state.user.is_some() || args.count() != 2 {
            return None;
        }
        let target = self
            .live
            .router
            .get(super::request::parse_int(args.arg(1))?)?;
        let on = self.live.router.get(i64::from(on))?;
        let (t, o) = (&target.config.upstream, &on.config.upstream);
        let alike = t.cluster.is_none()
            && o.cluster.is_none()
            && t.same_server(o)
            && t.key_prefix == o.key_prefix;
        alike.then(|| (target.config.index, local::upstream_select(target)))
    }

    /// A RESP3 subscriber's `HELLO 2`: `Some(true)` when the subscriber
    /// connection can follow the switch (Redis's client stays subscribed, now in
    /// RESP2; `pubsub::subscriber_to_resp2`), `Some(false)` when it cannot (it is
    /// refused): inside a transaction on that connection, with a tracking or
    /// login connection parked (it would have to switch too), on a cluster (its
    /// satellites and followers speak RESP3), or with `AUTH` (the login is the
    /// session's, checked apart); `None`: not such a request.
    fn resp2_while_subscribed(
        &self,
        s: &super::mode::Subscribed,
        cmd: &Descriptor,
        args: &dyn ArgList,
    ) -> Option<bool> {
        if !self.state.resp3 || cmd.route != Route::Hello || s.monitor {
            return None;
        }
        if args.count() < 2 || args.arg(1) != b"2" {
            return None;
        }
        let plain = match args.count() {
            2 => true,
            4 => {
                args.arg(2).eq_ignore_ascii_case(b"SETNAME")
                    && super::local::valid_name(args.arg(3))
            }
            _ => false,
        };
        Some(plain && s.tx.is_none() && s.parked.is_none() && self.state.db.cluster().is_none())
    }

    /// [`Self::subscribed_refusal`] on a cluster.
    fn cluster_refusal_while_subscribed(
        &self,
        s: &super::mode::Subscribed,
        cmd: &Descriptor,
        args: &dyn ArgList,
    ) -> Option<String> {
        let db = &self.state.db;
        db.cluster()?;
        let info = cmd.info?;
        // Redis refuses an unknown subcommand (its entry is the container's) and
        // a wrong number of arguments first: its own refusal, from the node.
        if !crate::command::arity_allows(info.arity, args.count())
            || info.has(crate::command::table::CONTAINER)
        {
            return None;
        }
        let pubsub = cmd.route == Route::Stateful(Family::PubSub);
        if !self.state.resp3 && !pubsub && !matches!(info.name, "ping" | "quit" | "reset") {
            return Some(not_in_pubsub_context(info.name));
        }
        if info.name != "ssubscribe" {
            return None;
        }
        let node = self
            .shard_addr(cmd, args)
            .filter(|node| node != s.sub.addr())?;
        Some(format!(
            "ERR SSUBSCRIBE '{}': the channel's slot is served by cluster node {}, and this connection's subscriptions are on {}; redis-sidecar subscribes a connection on one node: use another connection for this channel",
            String::from_utf8_lossy(args.arg(1)),
            node,
            s.sub.addr()
        ))
    }

    /// RESP3 allows every command while subscribed: those whose state the
    /// session keeps (its database, name, protocol, login) are the proxy's to
    /// answer, as unsubscribed (forwarded, the subscriber connection's state
    /// would change, not the session's).
    fn keeps_state_while_subscribed(
        &self,
        buf: &[u8],
        req: &request::Request,
        cmd: &Descriptor,
    ) -> bool {
        self.state.resp3
            && !matches!(&self.mode, Mode::Subscribed(s) if s.monitor)
            && match cmd.route {
                Route::Select | Route::Hello | Route::Auth | Route::CrossDb => true,
                Route::Client => with_args(buf, &self.args, req, |a| {
                    a.count() > 1
                        && [
                            &b"SETNAME"[..],
                            b"GETNAME",
                            b"ID",
                            b"INFO",
                            b"SETINFO",
                            b"REPLY",
                        ]
                        .iter()
                        .any(|s| a.arg(1).eq_ignore_ascii_case(s))
                }),
                _ => false,
            }
    }

    /// The request after a MULTI held back on a cluster database (a MULTI sent
    /// alone: no key yet says which node the transaction belongs to; the client
    /// got `+OK`). EXEC/DISCARD of an empty transaction, a nested MULTI and a WATCH
    /// are answered as Redis answers them; RESET and QUIT drop it; any other request
    /// opens the transaction on the node of its keys (any primary without keys):
    /// MULTI is sent there first, its reply dropped, and the request is queued after it.
    async fn deferred_step(
        &mut self,
        run: &mut Run,
        inbuf: &mut BytesMut,
        req: &request::Request,
        cmd: &Descriptor,
    ) -> Deferred {
        if matches!(cmd.route, Route::Reset | Route::Quit) {
            self.deferred_multi = false;
            self.deferred_dirty = false;
            return Deferred::Go;
        }
        let answer: Option<&[u8]> = match (cmd.tx, cmd.info.map_or("", |i| i.name)) {
            (TxOp::Multi, _) => Some(b"-ERR MULTI calls can not be nested\r\n"),
            (TxOp::Watch, _) => Some(b"-ERR WATCH inside MULTI is not allowed\r\n"),
            (TxOp::Abort, _) => Some(super::local::EXEC_ABORT_ARITY),
            (TxOp::End, "exec") if self.deferred_dirty => {
                Some(b"-EXECABORT Transaction discarded because of previous errors.\r\n")
            }
            (TxOp::End, "exec") => Some(b"*0\r\n"),
            (TxOp::End, _) => Some(b"+OK\r\n"),
            _ => None,
        };
        self.flush(run, inbuf).await;
        if let Some(text) = answer {
            inbuf.advance(req.len);
            if matches!(cmd.tx, TxOp::End | TxOp::Abort) {
                self.deferred_multi = false;
                self.deferred_dirty = false;
                self.publish();
            }
            self.push_reply(text.to_vec());
            return Deferred::Answered;
        }
        if self.waits_upstream() {
            // A new connection: after every earlier reply.
            return Deferred::Stall;
        }
        if let Some(c) = self.state.db.cluster().cloned() {
            let _ = c.ready().await;
        }
        let slot = self.pin_slot(&inbuf[..], req, cmd);
        self.hold_exclusive(slot);
        if let Some(h) = self.mode.held_mut() {
            // The client was told +OK: if the connection cannot be had, the
            // transaction is lost, not gone.
            h.known = true;
        }
        self.last = self.conn_for(Target::Held);
        let multi = Descriptor::of(&[&b"MULTI"[..]][..]);
        let bytes = Bytes::from_static(b"*1\r\n$5\r\nMULTI\r\n");
        let mut out = Outgoing::one(bytes, Target::Held, multi.index(), false);
        out.silent = true;
        // In MULTI before it is sent, as for a MULTI the client sent (its run is
        // sent after each request's step): the batch after it is then known to
        // be inside MULTI (until session 40 an EXEC that was the first request
        // on the connection after it, behind only requests the proxy queues
        // itself, `ASKING`, `READONLY`, got "EXEC without MULTI" when the
        // connection was lost), and a MULTI whose connection cannot be had is a
        // lost transaction, not none.
        self.transaction_step(TxOp::Multi);
        let db = self.state.db.clone();
        self.send(db, out).await;
        self.deferred_multi = false;
        if std::mem::take(&mut self.deferred_dirty) {
            self.refused_in_multi();
        }
        Deferred::Go
    }

    /// Parses and handles every complete request in `inbuf`. Returns early when a
    /// request must wait for earlier replies (`stalled`), when enough requests are
    /// in flight (`throttled`: backpressure) or the session closes.
    pub(super) async fn dispatch(&mut self, inbuf: &mut BytesMut) {
        if self.stale() && !self.refresh() {
            // A reload: the session moves once its replies are in.
            self.stalled = true;
            return;
        }
        // The session's shared slot is held up (another client's long script,
        // or a write Redis holds back in a pause): while so, its requests take
        // the detour slot (the switch either way waits for what is in flight, as
        // any change of connection does).
        self.detour = self.held_up();
        if std::mem::take(&mut self.auth_pause_due) {
            self.auth_pause().await;
        }
        let mut run = Run::new();
        let log_commands = self.live.config.log_commands;
        self.client.touch(&self.ctx.clients);
        while !self.closing && !self.stalled {
            if self.in_flight_full(run.count, run.readonly) {
                self.throttled = true;
                break;
            }
            // Resumable: a request arriving over many reads is parsed once.
            let before_auth;
            let limits = if self.state.authenticated {
                &self.live.config.limits
            } else {
                // Redis's limits for a client that has not authenticated.
                before_auth = self.live.config.limits.before_auth();
                &before_auth
            };
            let parsed = self.parser.parse(&inbuf[run.len..], limits, &mut self.args);
            let req = match parsed {
                Ok(Some(req)) => req,
                Ok(None) => break,
                Err(e) => {
                    stats::add(&self.ctx.stats.protocol_errors, 1);
                    tracing::info!(session = self.state.id, peer = %self.state.peer, error = %e, "closing client after protocol error");
                    self.flush(&mut run, inbuf).await;
                    inbuf.clear();
                    self.close_after(e.reply());
                    return;
                }
            };
            let cmd = match &req.kind {
                RequestKind::Empty => {
                    // Redis ignores these; they may travel inside a run.
                    run.len += req.len;
                    continue;
                }
                RequestKind::Multibulk => {
                    let args = Ranged {
                        buf: &inbuf[run.len..],
                        ranges: &self.args,
                    };
                    if log_commands {
                        log_command(self.state.id, args.arg(0));
                    }
                    Descriptor::of(&args)
                }
                RequestKind::Inline(args) => {
                    if log_commands {
                        log_command(self.state.id, args[..].arg(0));
                    }
                    Descriptor::of(&args[..])
                }
            };
            if cmd.route == Route::Attack {
                // An HTTP request (a web page trying cross-protocol scripting):
                // as Redis does, nothing after it runs and the client is closed
                // without a reply; the shared connections never see it.
                self.flush(&mut run, inbuf).await;
                tracing::warn!(session = self.state.id, peer = %self.state.peer, "Possible SECURITY ATTACK detected. It looks like somebody is sending POST or Host: commands to redis-sidecar. This is likely due to an attacker attempting to use Cross Protocol Scripting to compromise your Redis instance. Connection aborted.");
                inbuf.clear();
                self.parser.reset();
                self.queue.clear();
                self.closing = true;
                self.done = true;
                return;
            }
            let multibulk = matches!(req.kind, RequestKind::Multibulk);
            if cmd.info.is_some() {
                self.client.set_last_cmd(cmd.index());
                if self.state.authenticated && self.state.db.is_denied(cmd.index() as usize) {
                    self.flush(&mut run, inbuf).await;
                    inbuf.advance(req.len);
                    self.refuse_denied(cmd.index());
                    // Refused while queueing: the transaction is aborted at EXEC.
                    self.refused_in_multi();
                    continue;
                }
                if self.hides_cluster(&cmd, &req) && self.multi_while_subscribed() {
                    // Inside a transaction on a RESP3 subscriber connection: queued
                    // there as an `ECHO`, its refusal its element of EXEC's reply,
                    // as a standalone Redis queues it (below, for MULTI otherwise).
                    self.flush(&mut run, inbuf).await;
                    let (args, refusal) = self.take_hidden_cluster(inbuf, &req);
                    let queued = Queued {
                        after: 0,
                        route: cmd.route,
                        args,
                        reply: Some(refusal),
                    };
                    let skip = std::mem::take(&mut self.skip_next);
                    self.last = Conn::Sub;
                    self.queue_on_subscriber(queued, skip).await;
                    continue;
                }
                if self.hides_cluster(&cmd, &req) && !self.mode.in_multi() && !self.multi_unheld() {
                    // A database on a Redis Cluster looks like a standalone server:
                    // its nodes are not shown (clients would go around the proxy).
                    if !self
                        .refuse(&mut run, inbuf, req.len, command::CLUSTER_DISABLED)
                        .await
                    {
                        return;
                    }
                    continue;
                }
                if let Some(text) = self.every_node_in_multi(&cmd, &req, &inbuf[run.len..]) {
                    if !self.refuse(&mut run, inbuf, req.len, &text).await {
                        return;
                    }
                    continue;
                }
                if cmd.runs_while_busy()
                    && self.state.authenticated
                    && !self.mode.in_multi()
                    && !self.multi_unheld()
                    && matches!(self.mode, Mode::Shared | Mode::Private(_))
                {
                    // SCRIPT KILL and friends: at once, on a connection of their own.
                    self.flush(&mut run, inbuf).await;
                    let bytes = take_request(inbuf, &req);
                    let db = self.state.db.clone();
                    // On a cluster the script runs on one of the primaries: ask
                    // them all (before the map is learnt, the home node).
                    let primaries = match db.cluster() {
                        Some(c) if cmd.kills_script() => c.primary_configs(),
                        _ => Vec::new(),
                    };
                    let rx = if primaries.is_empty() {
                        oob::call(self.upstream_cfg(&db), self.state.resp3, bytes)
                    } else {
                        let cfgs = primaries.into_iter().map(|c| self.as_login(c)).collect();
                        oob::call_each(cfgs, self.state.resp3, bytes)
                    };
                    self.out_of_band(db, rx, cmd.index());
                    continue;
                }
            }
            if self.lost.is_some() {
                // The held connection of a transaction under way was lost.
                self.flush(&mut run, inbuf).await;
                let behind_barrier = self.lost_watch_subscribed(&cmd);
                if behind_barrier && !self.barrier_passed().await {
                    self.stalled = true;
                    return;
                }
                let ranges = std::mem::take(&mut self.args);
                let answer = with_args(&inbuf[..req.len], &ranges, &req, |a| {
                    self.lost_step(&cmd, a)
                });
                self.args = ranges;
                if let Some(out) = answer {
                    inbuf.advance(req.len);
                    self.push_reply(out);
                    continue;
                }
                if let Some(s) = self.mode.subscribed().filter(|_| behind_barrier) {
                    // Not answered here (a refusal for its arity, Redis's): the
                    // barrier still holds for whatever answers it below.
                    s.barrier_passed = true;
                }
            }
            if self.deferred_multi && self.state.authenticated {
                // A MULTI held back on a cluster (see `defer_multi`).
                // Boxed: rare, and its future would otherwise grow dispatch's.
                match Box::pin(self.deferred_step(&mut run, inbuf, &req, &cmd)).await {
                    Deferred::Answered => continue,
                    Deferred::Stall => {
                        self.stalled = true;
                        return;
                    }
                    Deferred::Go => {}
                }
            }
            if self.mode.in_multi() && self.hides_cluster(&cmd, &req) {
                // Queued, as Redis queues it: its refusal is its element of EXEC's
                // reply (`READONLY` inside MULTI does not abort).
                self.flush(&mut run, inbuf).await;
                let (args, refusal) = self.take_hidden_cluster(inbuf, &req);
                self.queue_local(cmd.route, &args, Some(refusal));
                continue;
            }
            // key_prefix: the request as rewritten, and how its reply is.
            let mut owned: Option<Vec<u8>> = None;
            let mut unprefix = None;
            // Inside MULTI after a SELECT, the database EXEC will run them on.
            let pending = self.mode.held().and_then(|h| h.pending_select.as_ref());
            let prefixed = pending
                .unwrap_or(&self.state.db)
                .config
                .upstream
                .key_prefix
                .clone();
            if let Some(pfx) = prefixed {
                if self.state.authenticated {
                    let planned = {
                        let ranged = Ranged {
                            buf: &inbuf[run.len..],
                            ranges: &self.args,
                        };
                        let args: &dyn ArgList = match &req.kind {
                            RequestKind::Inline(a) => a,
                            _ => &ranged,
                        };
                        let place = if self.mode.in_multi() {
                            prefix::Place::InMulti
                        } else if matches!(self.mode, Mode::Subscribed(_)) {
                            prefix::Place::Subscribed
                        } else {
                            prefix::Place::Plain
                        };
                        let mut planned = prefix::plan(&pfx, &cmd, args, place);
                        if let prefix::Plan::Refuse(text) = &mut planned {
                            // Not a command at all: Redis's own words, when sure.
                            let upstream = &self.state.db.config.upstream.endpoint;
                            if let Some(t) = prefix::unknown(&cmd, args, upstream) {
                                *text = t;
                            }
                        }
                        planned
                    };
                    match planned {
                        prefix::Plan::Synth(_)
                            if self.mode.is_private() || self.login.is_some() =>
                        {
                            // DBSIZE/FLUSHDB/RANDOMKEY run over the shared connection,
                            // with the proxy's credentials, not the client's own login.
                            self.flush(&mut run, inbuf).await;
                            inbuf.advance(req.len);
                            self.push_reply(prefix::PRIVATE_REFUSED.to_vec());
                            continue;
                        }
                        prefix::Plan::Refuse(text) => {
                            // A RESP2 subscriber gets Redis's own refusal (any
                            // command but pub/sub ones is refused there).
                            let text = match (&self.mode, cmd.info) {
                                (Mode::Subscribed(s), Some(info))
                                    if !s.monitor && !self.state.resp3 =>
                                {
                                    not_in_pubsub_context(info.name)
                                }
                                _ => text,
                            };
                            if !self.refuse(&mut run, inbuf, req.len, &text).await {
                                return;
                            }
                            continue;
                        }
                        prefix::Plan::Synth(synth) => {
                            self.flush(&mut run, inbuf).await;
                            if self.waits_upstream() {
                                // Runs after every earlier reply, on its own.
                                self.stalled = true;
                                return;
                            }
                            inbuf.advance(req.len);
                            stats::add(&self.ctx.stats.local_commands, 1);
                            let silent = self.reply_off || std::mem::take(&mut self.skip_next);
                            let rx = prefix::run(
                                synth,
                                self.state.db.clone(),
                                self.state.id,
                                self.state.resp3,
                                silent,
                            );
                            self.queue.push_back(Pending::Later(rx));
                            // Nothing after it runs before it is done.
                            self.stalled = true;
                            return;
                        }
                        prefix::Plan::Forward { bytes, reply } => {
                            owned = Some(match bytes {
                                Some(b) => b,
                                None if multibulk => inbuf[run.len..run.len + req.len].to_vec(),
                                None => match &req.kind {
                                    RequestKind::Inline(a) => encode(&a[..]),
                                    _ => Vec::new(),
                                },
                            });
                            if let Some(kind) = reply {
                                unprefix = self.rewrite_reply(kind, pfx);
                                if unprefix.is_some() {
                                    // Travels alone: its reply is rewritten.
                                    self.flush(&mut run, inbuf).await;
                                }
                            }
                        }
                    }
                }
            }
            if unprefix.is_none()
                && self.state.authenticated
                && self.state.db.cluster().is_some()
                && cmd.info.is_some_and(|i| i.name == "info")
            {
                // INFO from a node: `cluster_enabled:0`, as from a standalone
                // server. Travels alone: its reply is rewritten.
                unprefix = self.rewrite_reply(prefix::Unprefix::Info, Bytes::new());
                if unprefix.is_some() {
                    self.flush(&mut run, inbuf).await;
                }
            }
            let cmd = match self.paused_write(&cmd) {
                // Writes paused (`CLIENT PAUSE` through the proxy): Redis would
                // hold this request back, and everything behind it on its
                // connection. Like a blocking command, it travels alone on a
                // connection of its own until the pause ends, so the other
                // clients' requests on the shared connection go on.
                Some(left) => Descriptor {
                    route: Route::Stateful(Family::Blocking),
                    block: Block::For(left),
                    ..cmd
                },
                None => cmd,
            };
            if cmd.route == Route::Forward
                && multibulk
                && run.target == Target::Shared
                && unprefix.is_none()
                && self.plain()
            {
                // The common case, a plain command from a plain session: it joins
                // the run for the shared connection (what the general path below
                // concludes, without its checks).
                self.last = self.shared_conn();
                run.push(req.len, &cmd, owned.as_deref());
                continue;
            }

            if cmd.route == Route::Client
                && self.dormant.is_some()
                && with_args(&inbuf[run.len..], &self.args, &req, |a| {
                    self.dormant_subscriber_fits(a)
                })
            {
                // Tracking on again where it was on (`stand_in::Dormant`): back to
                // the subscriber connection, where it is sent below.
                self.flush(&mut run, inbuf).await;
                self.revive_dormant_subscriber().await;
            }

            // Subscribed: everything goes to the subscriber connection, except
            // what the proxy answers itself, which waits behind a barrier.
            if matches!(self.mode, Mode::Subscribed(_)) {
                if cmd.route == Route::Forward
                    && unprefix.is_none()
                    && self.routed_while_subscribed()
                    && !self.publishes_on_subscriber(&inbuf[run.len..], &req, &cmd)
                {
                    // RESP3 on a cluster, or on another database: as unsubscribed
                    // (by slot, or fanned out), after the replies to what went to
                    // the subscriber connection.
                    self.flush(&mut run, inbuf).await;
                    if self.last == Conn::Sub && !self.barrier_passed().await {
                        self.stalled = true;
                        return;
                    }
                    let bytes = take_owned(inbuf, &req, owned.take());
                    let out =
                        self.client_request(bytes, Target::Shared, cmd.index(), cmd.readonly());
                    self.last = self.shared_conn();
                    let db = self.state.db.clone();
                    self.send(db, out).await;
                    continue;
                }
                if let Some(text) = self.subscribed_refusal(&inbuf[run.len..], &req, &cmd) {
                    if !self.refuse(&mut run, inbuf, req.len, &text).await {
                        return;
                    }
                    continue;
                }
                if !self.state.resp3
                    && matches!(
                        cmd.route,
                        Route::Select
                            | Route::Hello
                            | Route::Auth
                            | Route::CrossDb
                            | Route::Client
                            | Route::Stateful(
                                Family::Transaction | Family::Blocking | Family::Monitor
                            )
                    )
                    && !self.barrier_passed().await
                {
                    // RESP2: Redis refuses it while subscribed, but runs it after
                    // an UNSUBSCRIBE that leaves none: whether the session is
                    // still subscribed is known once earlier replies are in (then
                    // it is the proxy's, as unsubscribed). A MULTI, WATCH,
                    // blocking command or MONITOR must not run on the subscriber
                    // connection, which closes once no subscription is left.
                    self.flush(&mut run, inbuf).await;
                    self.stalled = true;
                    return;
                }
                let answered_here = matches!(cmd.route, Route::Quit | Route::Reset | Route::Proxy)
                    || self.keeps_state_while_subscribed(&inbuf[run.len..], &req, &cmd);
                // What the proxy answers itself, inside the transaction on the
                // subscriber connection, that Redis queues there as on Redis
                // (`InSubTx`); the rest is refused below. (Arguments looked at
                // only for the routes that may be queued so.)
                let may_queue = matches!(cmd.route, Route::Select | Route::Client | Route::CrossDb)
                    && self.multi_while_subscribed();
                if let Some(queued) = may_queue
                    .then(|| {
                        with_args(&inbuf[run.len..], &self.args, &req, |a| {
                            self.queued_in_subscribed_tx(&cmd, a)
                        })
                    })
                    .flatten()
                {
                    self.flush(&mut run, inbuf).await;
                    inbuf.advance(req.len);
                    let skip = std::mem::take(&mut self.skip_next);
                    self.last = Conn::Sub;
                    match queued {
                        InSubTx::Select(index, select) => {
                            self.queue_subscriber_select(index, select, skip).await
                        }
                        InSubTx::Local(q) => self.queue_on_subscriber(q, skip).await,
                        InSubTx::Raw(bytes) => {
                            self.send_to_subscriber(&Bytes::from(bytes), false, skip)
                                .await
                        }
                    }
                    continue;
                }
                if !answered_here
                    && cmd.route == Route::Client
                    && !self.multi_while_subscribed()
                    && with_args(&inbuf[run.len..], &self.args, &req, |a| {
                        self.tracking_on_subscriber_wanted(a)
                    })
                {
                    // CLIENT TRACKING, GETREDIR … after every earlier reply: the
                    // next reply is theirs (redirect ids translated both ways).
                    self.flush(&mut run, inbuf).await;
                    if (self.last != Conn::Sub && self.waits_upstream())
                        || !self.barrier_passed().await
                    {
                        self.stalled = true;
                        return;
                    }
                    let args = with_args(&inbuf[..req.len], &self.args, &req, |a| {
                        (0..a.count())
                            .map(|i| a.arg(i).to_vec())
                            .collect::<Vec<_>>()
                    });
                    inbuf.advance(req.len);
                    self.last = Conn::Sub;
                    self.tracking_on_subscriber(&args).await;
                    continue;
                }
                if !answered_here {
                    self.flush(&mut run, inbuf).await;
                    if (self.last != Conn::Sub && self.waits_upstream())
                        || self.after_exec_while_subscribed()
                        || (cmd.tx == TxOp::Multi
                            && self.state.resp3
                            && !self.multi_on_subscriber().await)
                    {
                        // After the replies of another connection (a MOVE
                        // while subscribed runs on the shared one); see also
                        // `pubsub::SubTx`.
                        self.stalled = true;
                        return;
                    }
                    let bytes = take_owned(inbuf, &req, owned.take());
                    // (A RESP2 subscriber cannot ask: Redis refuses CLIENT there.)
                    let skip = std::mem::take(&mut self.skip_next) && self.state.resp3;
                    let unsubscribes =
                        cmd.route == Route::Stateful(Family::PubSub) && !cmd.subscribes;
                    if !self.state.resp3 && (cmd.tx == TxOp::Abort || cmd.is_exec()) {
                        // Redis refuses a RESP2 subscriber's EXEC with
                        // `-EXECABORT`, which ends its WATCH: a lost one too.
                        self.lost = None;
                    }
                    self.last = Conn::Sub;
                    self.send_to_subscriber(&bytes, unsubscribes, skip).await;
                    continue;
                }
                // What the subscriber connection follows (a HELLO 2, a SELECT),
                // sent before the barrier: what Redis sends after it is as the
                // session is after the request.
                let (to_resp2, reselect) = match &self.mode {
                    Mode::Subscribed(s) => with_args(&inbuf[run.len..], &self.args, &req, |a| {
                        let select = cmd.route == Route::Select;
                        (
                            self.resp2_while_subscribed(s, &cmd, a) == Some(true),
                            select
                                .then(|| self.subscriber_follows_select(s, a))
                                .flatten(),
                        )
                    }),
                    _ => (false, None),
                };
                if to_resp2 {
                    self.subscriber_to_resp2().await;
                }
                if let Some((index, select)) = reselect {
                    self.subscriber_select(index, &select).await;
                }
                if cmd.route == Route::Quit {
                    self.monitor_end(MonitorEnd::Quit).await;
                } else if cmd.route == Route::Reset
                    && with_args(&inbuf[run.len..], &self.args, &req, |a| a.count()) == 1
                {
                    self.monitor_end(MonitorEnd::Reset).await;
                }
                if !self.barrier_passed().await {
                    self.flush(&mut run, inbuf).await;
                    self.stalled = true;
                    return;
                }
                if self.multi_while_subscribed() && !matches!(cmd.route, Route::Quit | Route::Reset)
                {
                    // Refused, as Redis refuses a command while queueing: the
                    // marker sent in its place discards the transaction at EXEC.
                    let name = cmd
                        .info
                        .map_or("?", |i| i.name)
                        .to_ascii_uppercase()
                        .replace('|', " ");
                    let text = format!("ERR {name} inside a transaction on a subscribed connection is not supported by redis-sidecar");
                    self.flush(&mut run, inbuf).await;
                    inbuf.advance(req.len);
                    let mut out = Vec::new();
                    reply::error(&mut out, &text);
                    self.push_reply(out);
                    continue;
                }
            }

            let streams = matches!(
                cmd.route,
                Route::Stateful(Family::PubSub) | Route::Stateful(Family::Monitor)
            );
            // Inside MULTI an UNSUBSCRIBE is queued, as by Redis (`target`).
            let queued = !cmd.subscribes && self.mode.in_multi();
            if streams
                && self.state.authenticated
                && !matches!(self.mode, Mode::Subscribed(_))
                && !queued
            {
                self.flush(&mut run, inbuf).await;
                if !cmd.subscribes {
                    // UNSUBSCRIBE … without subscriptions: Redis's answer, one
                    // confirmation per channel (or one with nil).
                    let raw = inbuf.split_to(req.len);
                    let out = match &req.kind {
                        RequestKind::Inline(args) => unsubscribed(&args[..], self.state.resp3),
                        _ => unsubscribed(
                            &Ranged {
                                buf: &raw,
                                ranges: &self.args,
                            },
                            self.state.resp3,
                        ),
                    };
                    // Redis sends pub/sub confirmations also with CLIENT REPLY
                    // OFF or SKIP (they are pushes; SKIP is used up).
                    self.skip_next = false;
                    let off = std::mem::replace(&mut self.reply_off, false);
                    self.push_reply(out);
                    self.reply_off = off;
                    continue;
                }
                if self.waits_upstream() {
                    // Subscribe only after every earlier reply has arrived.
                    self.stalled = true;
                    return;
                }
                // (A WATCH's connection, taken over once idle: after the stall.)
                if let Err(refused) = self.owns_watch().await {
                    inbuf.advance(req.len);
                    self.push_reply(refused);
                    continue;
                }
                let monitor = cmd.route == Route::Stateful(Family::Monitor);
                // (Under a WATCH whose connection was lost, outside MULTI, a
                // subscription goes on, and so does the lost WATCH, see
                // `lost_step`; a MONITOR is refused.)
                if matches!(self.mode, Mode::Exclusive(_))
                    || self.mode.in_multi()
                    || (self.lost.is_some() && monitor)
                {
                    inbuf.advance(req.len);
                    let refusal = match self.lost {
                        Some(_) => self.transaction_refusal("MONITOR", "is"),
                        None => self.transaction_refusal("SUBSCRIBE and MONITOR", "are"),
                    };
                    self.push_reply(refusal);
                    self.refused_in_multi();
                    continue;
                }
                if !monitor && self.login_watch_apart() {
                    // A RESP3 subscriber's transaction runs on its subscriber
                    // connection, which would not be the one that watches.
                    inbuf.advance(req.len);
                    self.push_reply(
                        b"-ERR SUBSCRIBE under WATCH with an auth_passthrough login is not supported by redis-sidecar (EXEC, DISCARD or UNWATCH first)\r\n"
                            .to_vec(),
                    );
                    continue;
                }
                let db = self.state.db.clone();
                if let Some(c) = db.cluster().filter(|c| c.topology().is_none()) {
                    // The map, for the home node or the shard channel's node
                    // (learnt at start; waited for only by the first requests).
                    let _ = c.ready().await;
                }
                let mut cfg = self.upstream_cfg(&db);
                let mut sharded = false;
                if db.cluster().is_some() {
                    // SSUBSCRIBE: to the node serving the channel's slot.
                    sharded = with_args(&inbuf[..req.len], &self.args, &req, |args| {
                        shard_node(&db, &cmd, args, &mut cfg)
                    });
                }
                // A PUBLISH that other clients send from now on waits until the
                // subscription is in place (`publish_order`).
                let keyspace = with_args(&inbuf[..req.len], &self.args, &req, |args| {
                    (1..args.count()).any(|i| crate::publish_order::keyspace_channel(args.arg(i)))
                });
                let subscribing = self.ctx.publish_order.begin(keyspace);
                let revived = self.dormant_subscriber(monitor);
                if revived.is_none() && !monitor && self.state.resp3 {
                    // (Or a dormant private one, adopted below.)
                    self.revive_dormant().await;
                }
                let (opened, adopted, revived) = match revived {
                    Some((sub, was_on)) => (Ok(sub), None, Some(was_on)),
                    None => match self.adopt_tracking_conn(monitor).await {
                        Some(Some((sub, kept))) => (Ok(sub), Some(kept), None),
                        // Its tracking connection was lost: the client is closed.
                        Some(None) => return,
                        None => (
                            Box::pin(self.open_subscriber(&db, cfg, sharded, monitor)).await,
                            None,
                            None,
                        ),
                    },
                };
                match opened {
                    Ok(mut sub) => {
                        if let Some(first) = sub.first_reply() {
                            tokio::spawn(async move {
                                let _ = first.await;
                                drop(subscribing);
                            });
                        }
                        self.enter_pubsub(sub, monitor);
                        if let Some(kept) = adopted {
                            self.adopted_keeps(kept);
                        }
                        if let Some(was_on) = revived {
                            self.settle_revived(&was_on).await;
                        }
                        let bytes = take_owned(inbuf, &req, owned.take());
                        self.last = Conn::Sub;
                        // CLIENT REPLY SKIP is used up by it (its confirmations
                        // are pushes, which Redis sends anyway).
                        self.skip_next = false;
                        self.send_to_subscriber(&bytes, false, false).await;
                    }
                    Err(e) => {
                        inbuf.advance(req.len);
                        let mut out = Vec::new();
                        reply::error(&mut out, &error_text(&db, &e, 1));
                        if self.reply_off || self.skip_next {
                            // The client would not be told (Redis would have
                            // confirmed the subscription even so): it is closed,
                            // as when a subscriber connection is lost.
                            tracing::info!(session = self.state.id, "subscriber connection could not be opened with replies off; closing the client");
                            self.close_after(out);
                        } else {
                            self.push_reply(out);
                        }
                    }
                }
                continue;
            }

            if let Some(reply) = self.end_without_multi(&cmd) {
                // Redis refuses it and changes nothing (a WATCH stays): answered
                // here, so the answer holds whatever becomes of the connection.
                self.flush(&mut run, inbuf).await;
                inbuf.advance(req.len);
                self.push_reply(reply.to_vec());
                continue;
            }
            if self.arity_refused(&cmd) {
                self.flush(&mut run, inbuf).await;
                let reply = with_args(&inbuf[..req.len], &self.args, &req, |a| {
                    super::local::arity_error(a, false)
                });
                inbuf.advance(req.len);
                self.push_reply(reply);
                self.refused_in_multi();
                continue;
            }

            if let Some(target) = self.target(cmd.route) {
                let conn = self.conn_for(target);
                if target != run.target || conn != self.last {
                    self.flush(&mut run, inbuf).await;
                }
                if conn != self.last && self.waits_upstream() {
                    // Another connection: it runs only after everything before it
                    // has been answered.
                    self.stalled = true;
                    return;
                }
                if target == Target::Held && self.mode.held().is_none() {
                    let cluster = self.state.db.cluster().cloned();
                    let slot = if let Some(c) = cluster {
                        // The map, to find the node (learnt at start; waited
                        // for only by the first requests).
                        let _ = c.ready().await;
                        let slot = self.pin_slot(&inbuf[run.len..], &req, &cmd);
                        if slot.is_none() && cmd.tx == TxOp::Multi {
                            // No key yet to pick the node by: MULTI waits for one.
                            self.flush(&mut run, inbuf).await;
                            inbuf.advance(req.len);
                            self.deferred_multi = true;
                            self.publish();
                            self.push_reply(b"+OK\r\n".to_vec());
                            continue;
                        }
                        slot
                    } else {
                        None
                    };
                    self.hold_exclusive(slot);
                }
                let aborts = cmd.is_exec() && self.mode.held().is_some_and(|h| h.dirty);
                // An EXEC with arguments: Redis's refusal ends the transaction
                // and the WATCH.
                let arity = cmd.tx == TxOp::Abort && self.mode.held().is_some();
                if aborts || arity {
                    // As Redis: a transaction with a refused command is discarded at
                    // EXEC. The connection gets DISCARD (UNWATCH outside MULTI);
                    // the client, EXECABORT.
                    self.flush(&mut run, inbuf).await;
                    inbuf.advance(req.len);
                    let in_multi = self.mode.in_multi();
                    if let Some(h) = self.mode.held_mut() {
                        h.pending_select = None;
                    }
                    let reset = Bytes::from_static(match in_multi {
                        true => b"*1\r\n$7\r\nDISCARD\r\n",
                        false => b"*1\r\n$7\r\nUNWATCH\r\n",
                    });
                    let mut out = Outgoing::one(reset, Target::Held, cmd.index(), false);
                    out.silent = true;
                    let db = self.state.db.clone();
                    self.last = conn;
                    self.send(db, out).await;
                    self.push_reply(match arity {
                        true => super::local::EXEC_ABORT_ARITY.to_vec(),
                        false => {
                            b"-EXECABORT Transaction discarded because of previous errors.\r\n"
                                .to_vec()
                        }
                    });
                    if let Some(clean) = self.held_done(cmd.tx) {
                        self.release(clean);
                    }
                    continue;
                }
                self.last = conn;
                run.target = target;
                if !self.mode.in_multi() && cmd.block != Block::No {
                    // Travels alone (the connection is let go after it) with its
                    // own deadline.
                    run.block = cmd.block;
                }
                let mut splice = Vec::new();
                if matches!(cmd.tx, TxOp::End | TxOp::Abort) {
                    let pending = self.mode.held_mut().and_then(|h| h.pending_select.take());
                    // (DISCARD, an aborted EXEC: the SELECT never runs.)
                    let exec = cmd.is_exec();
                    if let Some(h) = self.mode.held_mut().filter(|_| exec) {
                        splice = std::mem::take(&mut h.locals);
                        let queued = std::mem::take(&mut h.unprefix);
                        if !queued.is_empty() {
                            // Its reply's elements that name keys are rewritten.
                            unprefix = Some(prefix::Rewrite::Exec(queued));
                            self.flush(&mut run, inbuf).await;
                            run.target = target;
                        }
                    }
                    if !splice.is_empty() {
                        // EXEC of a transaction with commands the proxy answers
                        // itself travels alone: they run when its reply says it ran.
                        self.flush(&mut run, inbuf).await;
                        run.target = target;
                    }
                    if let Some(db) = pending.filter(|_| exec) {
                        // EXEC of a transaction with a SELECT travels alone: its
                        // reply says whether the SELECT ran.
                        self.flush(&mut run, inbuf).await;
                        run.target = target;
                        run.select_after = Some(db);
                    }
                }
                let skip = std::mem::take(&mut self.skip_next);
                if skip {
                    // CLIENT REPLY SKIP: this command travels alone, its reply dropped.
                    self.flush(&mut run, inbuf).await;
                    run.target = target;
                    run.silent = true;
                }
                if skip || self.reply_off {
                    // The client takes a request whose reply it skipped as run: a
                    // transaction begun so is one it knows of (`lose_held`), even
                    // if the connection is lost before Redis answered anything.
                    if let Some(h) = self.mode.held_mut().filter(|_| target == Target::Held) {
                        h.known = true;
                    }
                }
                let queued = self.queue.len();
                if multibulk {
                    run.push(req.len, &cmd, owned.as_deref());
                } else {
                    // Inline: re-encoded, alone.
                    self.flush(&mut run, inbuf).await;
                    let bytes = take_owned(inbuf, &req, owned.take());
                    let mut out = Outgoing::one(bytes, target, cmd.index(), cmd.readonly());
                    out.silent = skip;
                    out.block = if self.mode.in_multi() {
                        Block::No
                    } else {
                        cmd.block
                    };
                    let db = self.state.db.clone();
                    self.send(db, out).await;
                    run.target = target;
                }
                let exec_switches = run.select_after.is_some() || !splice.is_empty();
                if skip || exec_switches || unprefix.is_some() {
                    self.flush(&mut run, inbuf).await;
                    let sent = self.queue.len() > queued;
                    if let (Some(Pending::Upstream(sent)), true) = (self.queue.back_mut(), sent) {
                        sent.unprefix = unprefix;
                        if !splice.is_empty() {
                            sent.splice = Some(splice);
                        }
                    }
                }
                if target == Target::Held {
                    if let Some(clean) = self.held_done(cmd.tx) {
                        self.flush(&mut run, inbuf).await;
                        self.release(clean);
                    }
                }
                if exec_switches {
                    // The next request runs on the database EXEC leaves selected
                    // (and after the commands it ran in the proxy).
                    self.stalled = true;
                    return;
                }
                continue;
            }

            // Answered by the proxy: this ends the run.
            self.flush(&mut run, inbuf).await;
            // Boxed: its future is large, and would otherwise be part of every
            // session's task, idle or not (see `Session::serve`).
            if let Some(stall) = Box::pin(self.local(inbuf, &req, &cmd)).await {
                if stall {
                    self.stalled = true;
                }
                return;
            }
        }
        self.flush(&mut run, inbuf).await;
    }

    /// A forwarded request whose reply names keys (`key_prefix`) or is otherwise
    /// rewritten (a cluster node's INFO): how. Inside MULTI its reply is an
    /// element of EXEC's, noted here and rewritten there (`None`).
    fn rewrite_reply(&mut self, kind: prefix::Unprefix, pfx: Bytes) -> Option<prefix::Rewrite> {
        match self.mode.held_mut().filter(|h| h.in_multi) {
            Some(h) => {
                // Its element: after the requests Redis queued and the ones the
                // proxy answers itself (`splice_exec` puts those in first).
                let at = h.queued as usize + h.locals.len();
                h.unprefix.push((at, kind, pfx));
                None
            }
            None => Some(prefix::Rewrite::One(kind, pfx)),
        }
    }

    /// The growing pause after a refused AUTH / PROXY AUTH ([`local::auth_delay`]),
    /// taken before its reply is queued. It holds only this session's task; the
    /// proxy's shutdown or CLIENT KILL (the client's token) ends it at once.
    async fn auth_pause(&mut self) {
        let delay = local::auth_delay(self.state.auth_failures);
        if delay.is_zero() {
            return;
        }
        tokio::select! {
            _ = self.client.closed() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Answers the request of `len` bytes at the front of `inbuf` (after the run
    /// before it is sent) with the error `text`, as Redis refuses a command (inside
    /// MULTI: the transaction is aborted at EXEC). `false`: it waits, not
    /// consumed (subscribed: for the replies to what came before, `stalled`).
    async fn refuse(
        &mut self,
        run: &mut Run,
        inbuf: &mut BytesMut,
        len: usize,
        text: &str,
    ) -> bool {
        self.flush(run, inbuf).await;
        if !self.barrier_passed().await {
            self.stalled = true;
            return false;
        }
        inbuf.advance(len);
        let mut out = Vec::new();
        reply::error(&mut out, text);
        self.push_reply(out);
        self.refused_in_multi();
        true
    }

    /// A request was refused while queueing inside MULTI: EXEC will answer
    /// `-EXECABORT` (also for a MULTI still deferred on a cluster).
    pub(super) fn refused_in_multi(&mut self) {
        if let Some(h) = self.mode.held_mut().filter(|h| h.in_multi) {
            h.dirty = true;
        } else if self.deferred_multi {
            self.deferred_dirty = true;
        } else if let Some(l) = self.lost.as_mut().filter(|l| l.multi) {
            l.dirty = true;
        }
    }

    /// Whether the request is one a standalone Redis refuses for want of cluster
    /// support ([`command::cluster_only`]) on a database on a Redis Cluster: the
    /// proxy answers it so. (A RESP2 subscriber's goes to its connection, whose
    /// node refuses it in that context first, as Redis would.)
    fn hides_cluster(&self, cmd: &Descriptor, req: &request::Request) -> bool {
        if !self.state.authenticated || self.state.db.cluster().is_none() {
            return false;
        }
        let argc = match &req.kind {
            RequestKind::Inline(a) => a.len(),
            _ => self.args.len(),
        };
        cmd.info.is_some_and(|i| command::cluster_only(i, argc))
            && (self.state.resp3 || !matches!(self.mode, Mode::Subscribed(_)))
    }

    /// Inside MULTI on a database on a Redis Cluster, a command that acts on the
    /// whole keyspace or every server (`KEYS`, `SCAN`, `DBSIZE`, `FLUSHDB`,
    /// `SCRIPT LOAD`, `CONFIG SET` …: outside MULTI sent to every node and merged)
    /// would run on the transaction's one node only: refused, with the text to
    /// answer (the transaction is then aborted, as by Redis for a refused
    /// command). `PUBLISH` (the cluster delivers it everywhere) and `INFO` go on.
    fn every_node_in_multi(
        &self,
        cmd: &Descriptor,
        req: &request::Request,
        buf: &[u8],
    ) -> Option<String> {
        use crate::cluster::plan::{self, Merge, Plan};
        let multi = self.mode.in_multi() || self.multi_unheld();
        if !multi || !self.state.authenticated || self.state.db.cluster().is_none() {
            return None;
        }
        with_args(buf, &self.args, req, |args| {
            match plan::plan(cmd.info, args) {
                Plan::Every(Merge::Info) => None,
                Plan::Every(_) | Plan::EveryNode(_) | Plan::Scan => Some(format!(
                    "ERR '{}' inside MULTI is not supported on a Redis Cluster database \
                     (it runs on every node; a transaction runs on one)",
                    prefix::shown(args)
                )),
                _ => None,
            }
        })
    }

    /// `-NOPERM` for a command in the database's `deny_commands`.
    fn refuse_denied(&mut self, idx: u16) {
        let mut out = Vec::new();
        if self.state.db.is_removed() {
            reply::error(
                &mut out,
                &format!(
                    "ERR database {} was removed from redis-sidecar's configuration by a reload: SELECT another database",
                    self.state.db.label()
                ),
            );
            return self.push_reply(out);
        }
        reply::error(
            &mut out,
            &format!(
                "NOPERM '{}' is denied by redis-sidecar's deny_commands for database {}",
                command::command_name(idx as usize).replace('_', " "),
                self.state.db.label()
            ),
        );
        self.push_reply(out);
    }

    /// A command the proxy answers itself (the run before it already sent).
    /// `None`: go on with the next request; `Some(true)`: it must wait for earlier
    /// replies (not consumed); `Some(false)`: stop (the session closes).
    async fn local(
        &mut self,
        inbuf: &mut BytesMut,
        req: &request::Request,
        cmd: &Descriptor,
    ) -> Option<bool> {
        let route = cmd.route;
        let logs_in = self.live.config.auth_passthrough && route == Route::Auth;
        let moves_private = self.mode.is_private() && route == Route::Select;
        // CLIENT … and MOVE/COPY/SWAPDB may be forwarded on the session's
        // connection: they keep their place after the previous connection's replies.
        let forwards_elsewhere = matches!(route, Route::Client | Route::CrossDb)
            && self.conn_for(self.current_target()) != self.last;
        let tracking = self.tracking_waits(route, inbuf, req);
        // RESET and QUIT let the held connection go: what is in flight on it is
        // settled first, so that a failure there is answered as the transaction
        // state it was sent in (a DISCARD outside MULTI under a lost WATCH gets
        // Redis's refusal, not `+OK`).
        let releases =
            matches!(route, Route::Reset | Route::Quit) && matches!(self.mode, Mode::Exclusive(_));
        if matches!(route, Route::Reset | Route::Quit) && !self.end_barrier && self.own_pushes() {
            // The pushes Redis sent on the session's own connection before
            // this (a flush's invalidation right after FLUSHDB's reply) reach
            // the client first: a PING's reply, not passed on, comes after them.
            self.end_barrier = true;
            let skip = std::mem::replace(&mut self.skip_next, true);
            self.forward(encode(&[&b"PING"[..]][..]), Target::Held, cmd.index(), None)
                .await;
            self.skip_next = skip;
            return Some(true);
        }
        if (route == Route::Hello
            || logs_in
            || moves_private
            || forwards_elsewhere
            || tracking
            || releases)
            && self.waits_upstream()
        {
            return Some(true);
        }
        let raw = inbuf.split_to(req.len);
        let ranges = self.args.clone();
        let ranged = Ranged {
            buf: &raw,
            ranges: &ranges,
        };
        let args: &(dyn ArgList + Sync) = match &req.kind {
            RequestKind::Inline(a) => a,
            _ => &ranged,
        };
        if self.queue_in_multi(cmd, args) {
            return None;
        }
        if route == Route::Client {
            if let Some(mode) = client_reply(args) {
                // CLIENT REPLY OFF/SKIP themselves get no reply; ON gets +OK.
                match mode {
                    Ok(ReplyMode::On) => {
                        self.reply_off = false;
                        self.skip_next = false;
                        self.push_reply(b"+OK\r\n".to_vec());
                    }
                    Ok(ReplyMode::Off) => {
                        // (A SKIP before it is used up by it, as by any command.)
                        self.reply_off = true;
                        self.skip_next = false;
                    }
                    Ok(ReplyMode::Skip) => self.skip_next = !self.reply_off,
                    Err(refused) => self.push_reply(refused.to_vec()),
                }
                return None;
            }
        }
        if let Some(handled) = self.tracking_local(route, args, cmd.index()).await {
            return handled;
        }
        if self.live.config.auth_passthrough {
            if let Some(creds) = local::credentials(route, args, self.state.resp3) {
                // Redis checks the credentials: the session logs in on a
                // connection of its own, or gets Redis's refusal.
                if route == Route::Auth && self.logs_in_place() {
                    self.log_in_place(creds, encode(args), cmd.index()).await;
                    return None;
                }
                if let Err(refused) = self.log_in(creds).await {
                    self.push_reply(refused);
                    self.refused_in_multi();
                    return None;
                }
            }
        }
        if route == Route::Hello {
            // Under WATCH: switches the watching connection, now the session's own.
            if let Err(refused) = self.owns_watch().await {
                self.push_reply(refused);
                return None;
            }
        }
        let held = self.mode.held().is_some();
        let in_multi = self.mode.in_multi();
        let failures_before = self.state.auth_failures;
        // A SELECT sent on the held connection outside MULTI: the session moves
        // once Redis has said +OK (a user may not be allowed to SELECT).
        let mut switch = None;
        let outcome = if held && route == Route::Select {
            match local::select_in_transaction(&self.state, &View::new(&self.ctx, &self.live), args)
            {
                Ok((db, select)) => {
                    if let Some(h) = self.mode.held_mut() {
                        h.conn.reselect_on_release();
                        if h.in_multi {
                            // Queued: it takes effect if EXEC runs the transaction.
                            h.pending_select = Some(db);
                        } else {
                            // Under WATCH (or on a private connection), outside
                            // MULTI: it runs now.
                            switch = Some(db);
                        }
                    }
                    local::Outcome::Forward(Some(select))
                }
                // A private connection follows the client to another server.
                Err(_) if self.mode.is_private() && !in_multi => local::handle(
                    &mut self.state,
                    &View::new(&self.ctx, &self.live),
                    route,
                    args,
                ),
                Err(refused) => {
                    let view = View::new(&self.ctx, &self.live);
                    match local::select_error(&view, args).filter(|_| in_multi) {
                        // As Redis: queued, its error in EXEC's reply.
                        Some(error) => {
                            self.queue_local(route, args, Some(error));
                            return None;
                        }
                        None => refused,
                    }
                }
            }
        } else if held && route == Route::Hello && (!self.mode.is_private() || in_multi) {
            local::Outcome::Reply(
                b"-ERR HELLO inside a transaction is not supported by redis-sidecar\r\n".to_vec(),
            )
        } else {
            // (A RESET with arguments is refused, nothing reset.)
            let resets = route == Route::Reset && args.count() == 1;
            self.end_barrier = false;
            if resets || route == Route::Quit {
                self.leave_pubsub();
                self.release(false);
                self.login = None;
                self.lost = None;
            }
            if resets {
                // As Redis: RESET turns replies back on (a SKIP before it still
                // drops RESET's own reply).
                self.reply_off = false;
            }
            local::handle(
                &mut self.state,
                &View::new(&self.ctx, &self.live),
                route,
                args,
            )
        };
        if self.state.auth_failures > failures_before {
            self.auth_pause().await;
        }
        if let Err(e) = self.follow_private().await {
            self.close_after(e);
            return Some(false);
        }
        self.publish();
        match outcome {
            local::Outcome::Reply(r) => {
                if in_multi && reply::is_error(&r) {
                    // Refused while queueing (HELLO, a SELECT across servers, an
                    // unknown CLIENT subcommand …).
                    self.refused_in_multi();
                }
                self.push_reply(r)
            }
            local::Outcome::Later(rx) => {
                stats::add(&self.ctx.stats.local_commands, 1);
                if !self.reply_off && !std::mem::take(&mut self.skip_next) {
                    self.queue.push_back(Pending::Later(rx));
                }
            }
            local::Outcome::ForwardTo(db, encoded) => {
                // CLIENT UNBLOCK: on the other database's shared connection.
                let out =
                    self.client_request(Bytes::from(encoded), Target::Shared, cmd.index(), false);
                self.send(db, out).await;
            }
            local::Outcome::ForwardAt(db, node, encoded) => {
                // CLIENT UNBLOCK on a cluster: to the node of the connection.
                let mut cfg = self.upstream_cfg(&db);
                if let Some((host, port)) = crate::cluster::map::split_addr(&node) {
                    cfg.host = host;
                    cfg.port = port;
                }
                let rx = oob::call(cfg, self.state.resp3, Bytes::from(encoded));
                self.out_of_band(db, rx, cmd.index());
            }
            local::Outcome::Pause(noted) => {
                self.forward_here(raw.freeze(), cmd.index(), None, Some(noted))
                    .await;
            }
            local::Outcome::Forward(encoded) => {
                let bytes = encoded.map(Bytes::from).unwrap_or_else(|| raw.freeze());
                let switches = switch.is_some();
                self.forward_here(bytes, cmd.index(), switch, None).await;
                if switches {
                    // The next request runs on the database its reply leaves.
                    return Some(true);
                }
            }
            local::Outcome::Close(r) => {
                self.close_after(r);
                return Some(false);
            }
        }
        None
    }

    /// Sends a request the proxy looked at (CLIENT KILL/PAUSE, MOVE, SWAPDB …,
    /// never retried) where the session's requests go now. `select_after`: an
    /// EXEC or SELECT whose reply moves the session; `pause`: the pause it noted,
    /// kept with it to be taken back if Redis refuses it (at once if it was not
    /// sent: an open circuit).
    async fn forward_here(
        &mut self,
        bytes: Bytes,
        cmd: u16,
        select_after: Option<Arc<Database>>,
        pause: Option<local::PauseNoted>,
    ) {
        let target = self.current_target();
        if target == Target::Held {
            // Inside MULTI, Redis queues it.
            self.transaction_step(TxOp::None);
        }
        self.last = self.conn_for(target);
        let mut out = self.client_request(bytes, target, cmd, false);
        out.select_after = select_after;
        let db = self.state.db.clone();
        let before = self.queue.len();
        self.send(db, out).await;
        let Some(noted) = pause else {
            return;
        };
        let queued = self.queue.len() > before;
        match self.queue.back_mut() {
            Some(Pending::Upstream(sent)) if queued => sent.pause_noted = Some(noted),
            _ => noted.take_back(),
        }
    }

    /// Where a forwarded request goes now: the held connection, if any.
    fn current_target(&self) -> Target {
        if self.mode.held().is_some() {
            Target::Held
        } else {
            Target::Shared
        }
    }
}

/// CLIENT REPLY's argument.
enum ReplyMode {
    On,
    Off,
    Skip,
}

/// `Some(mode)` for `CLIENT REPLY <mode>` (`Some(Err(reply))`: Redis's refusal of
/// a bad one), `None` for any other command.
fn client_reply<L: ArgList + ?Sized>(args: &L) -> Option<Result<ReplyMode, &'static [u8]>> {
    if args.count() < 2 || !args.arg(1).eq_ignore_ascii_case(b"REPLY") {
        return None;
    }
    if args.count() != 3 {
        return Some(Err(
            b"-ERR wrong number of arguments for 'client|reply' command\r\n",
        ));
    }
    let m = args.arg(2);
    Some(if m.eq_ignore_ascii_case(b"ON") {
        Ok(ReplyMode::On)
    } else if m.eq_ignore_ascii_case(b"OFF") {
        Ok(ReplyMode::Off)
    } else if m.eq_ignore_ascii_case(b"SKIP") {
        Ok(ReplyMode::Skip)
    } else {
        Err(b"-ERR syntax error\r\n")
    })
}

/// Logs a command's name (never its arguments): control and non-ASCII bytes
/// escaped, at most 64 bytes shown, so a client cannot forge log lines or flood
/// the log with one huge name.
fn log_command(session: u64, name: &[u8]) {
    const SHOWN: usize = 64;
    let mut shown: String = name
        .iter()
        .take(SHOWN)
        .flat_map(|b| std::ascii::escape_default(b.to_ascii_uppercase()))
        .map(char::from)
        .collect();
    if name.len() > SHOWN {
        shown.push_str(&format!("…({} bytes)", name.len()));
    }
    tracing::info!(session, command = %shown, "command");
}

/// Re-encodes inline arguments as a multibulk request for the upstream.
pub(super) fn encode<L: ArgList + ?Sized>(args: &L) -> Vec<u8> {
    let all: Vec<&[u8]> = (0..args.count()).map(|i| args.arg(i)).collect();
    let mut out = Vec::new();
    encode_command(&all, &mut out);
    out
}

/// The commands the proxy answers itself that a RESP3 subscriber's transaction
/// on its subscriber connection queues (`SubTx::locals`) rather than refuses:
/// `CLIENT SETNAME|GETNAME|ID|INFO|SETINFO` with Redis's arity (a wrong one is
/// refused as before).
fn queued_while_subscribed(a: &dyn ArgList) -> bool {
    let n = a.count();
    let sub = if n > 1 { a.arg(1) } else { b"" };
    let is = |name: &[u8]| sub.eq_ignore_ascii_case(name);
    (is(b"SETNAME") && n == 3)
        || ((is(b"GETNAME") || is(b"ID") || is(b"INFO")) && n == 2)
        || (is(b"SETINFO") && n == 4)
}

/// What a RESP3 subscriber's transaction on its subscriber connection queues in
/// place of a request the proxy answers itself (`Session::queued_in_subscribed_tx`).
enum InSubTx {
    /// A `SELECT` (the database's index, and the `SELECT` of its upstream db).
    Select(u32, Vec<u8>),
    /// A command the proxy runs at EXEC.
    Local(Queued),
    /// The request as Redis queues it (db indexes translated).
    Raw(Vec<u8>),
}
