//! Client-side caching through the proxy: `CLIENT TRACKING` and its companions.
//!
//! Tracking is a property of one Redis connection, and Redis sends invalidation
//! messages on it at any time, so a tracking session cannot stay on the shared
//! connections. `CLIENT TRACKING ON` gives the session a connection of its own (the
//! *private* mode of `auth_passthrough`, opened with the database's credentials or
//! the session's login) and is sent there; every later request goes there too.
//! That connection's task reads it while no command is in flight, so RESP3 pushes
//! (`>2 invalidate …`) reach the client at once, also while it is idle, and pushes
//! that arrive between replies stay exactly where Redis put them.
//!
//! * `CLIENT TRACKING OFF` (Redis's `+OK`) turns tracking off; a session that has no
//!   other reason for its own connection (no `auth_passthrough` login, no WATCH)
//!   goes back to the shared connections, and the tracking connection is kept
//!   idle for the next `CLIENT TRACKING ON`: Redis still holds the keys it
//!   tracked there, and reports them once tracking is on again
//!   (`super::stand_in::Dormant`).
//! * `REDIRECT <id>` names a proxy session (its `CLIENT ID` through the proxy).
//!   It is sent to Redis as the id of that session's own upstream connection — its
//!   subscriber connection (the RESP2 way: subscribed to `__redis__:invalidate`),
//!   or its tracking / `auth_passthrough` connection (a RESP3 client gets pushes
//!   there). A session without one gets a *push connection* opened for it (on a
//!   cluster, the id of a connection that is never subscribed, see
//!   `crate::clients`), which it reads for as long as it lives and writes what
//!   Redis pushes there as Redis would write it to the session as it is at that
//!   moment: a push in RESP3, a message on `__redis__:invalidate` while subscribed
//!   in RESP2, nothing otherwise. An own connection that a redirect named is
//!   kept as that push connection when the session lets go of it
//!   (`super::stand_in`), and a redirect to a session that has a push
//!   connection names it. An id that is no
//!   proxy session is sent as one no Redis client has, so Redis's own error
//!   (`The client ID you want redirect to does not exist`) comes back, after any
//!   other error Redis finds first.
//! * `CLIENT GETREDIR` and `CLIENT TRACKINGINFO` are sent on the tracking
//!   connection while tracking is on, and the redirect id in their replies (and in
//!   `tracking-redir-broken` pushes) is translated back to the proxy session id.
//!   `CLIENT CACHING` goes there too. With tracking off they keep the answers of
//!   `local.rs`, which are Redis's for a client with tracking off.
//! * While tracking is on, `SELECT` of a database on another upstream server,
//!   `HELLO … AUTH` with `auth_passthrough`, and `CLIENT TRACKING` inside a
//!   transaction are refused (the tracking connection cannot follow them; a plain
//!   `AUTH` is sent on it, which keeps tracking); `HELLO 2|3` switches the
//!   protocol of the tracking connection in place, so what Redis tracks is kept. If
//!   the tracking connection closes, the client's connection is closed, as a
//!   subscriber's is: its cache would otherwise never be invalidated again.
//! * A RESP3 client that subscribes while tracking subscribes on its tracking
//!   connection, as Redis's client does on the one connection it has
//!   (`Session::adopt_tracking_conn`): the connection becomes its subscriber
//!   connection, tracking, and stays the session's after the last unsubscribe
//!   until tracking is turned off. There `CLIENT TRACKING` and, with a redirect,
//!   `GETREDIR`/`TRACKINGINFO` are sent after every earlier reply, their redirect
//!   ids translated both ways ([`OnSubscriber`]).

use bytes::{Bytes, BytesMut};
use std::sync::atomic::Ordering::Relaxed;

use super::dispatch::{encode, Outgoing, Target};
use super::local;
use super::mode::{Conn, Mode};
use super::queue::{error_text, CmdList, Pending};
use super::Session;
use crate::clients::Exclusive;
use crate::command::{table, ArgList, Block, Ranged, Route, TxOp};
use crate::protocol::reply;
use crate::protocol::request::{parse_int, Request, RequestKind};
use crate::upstream::pubsub::End;

/// What the session knows of its tracking, once Redis accepted `CLIENT TRACKING ON`.
#[derive(Debug, Clone)]
pub(super) struct Tracking {
    /// REDIRECT: the proxy session the client named.
    pub redirect: Option<u64>,
    /// The Redis client id sent in its place.
    pub upstream_redirect: u64,
    /// BCAST mode.
    pub bcast: bool,
    /// BCAST: the prefixes Redis holds for the client (`""` for none given),
    /// every `CLIENT TRACKING ON` adding its own, as Redis does.
    pub prefixes: Vec<Vec<u8>>,
}

/// What the reply to a tracking request sent on a subscriber connection changes
/// (RESP3: Redis's client tracks on the connection it subscribed on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnSubscriber {
    /// `CLIENT TRACKING ON|OFF`: on `+OK`, the redirect becomes this; on a
    /// refusal, tracking is as it was (`bool`: on) before the request.
    Switch(Option<(u64, u64)>, bool),
    /// `CLIENT GETREDIR` / `TRACKINGINFO`: the redirect id is translated back.
    Back,
}

/// What the reply to a forwarded tracking command changes.
#[derive(Debug)]
pub(super) enum Hook {
    /// `CLIENT TRACKING ON|OFF`: on `+OK`, tracking becomes this.
    Switch(Option<Tracking>),
    /// `CLIENT GETREDIR` / `TRACKINGINFO`: the redirect id is translated back.
    Redirect,
    /// `AUTH` on the session's own connection (`auth_passthrough`): on `+OK` the
    /// session is logged in as this (see [`Session::log_in_place`]).
    Login(Box<super::exclusive::Login>),
}

/// The tracking subcommands of CLIENT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sub {
    Tracking,
    Caching,
    GetRedir,
    TrackingInfo,
}

/// Which tracking subcommand of CLIENT `args` is, if any.
pub(super) fn sub<L: ArgList + ?Sized>(args: &L) -> Option<Sub> {
    let name = args.arg(1);
    [
        (&b"TRACKING"[..], Sub::Tracking),
        (b"CACHING", Sub::Caching),
        (b"GETREDIR", Sub::GetRedir),
        (b"TRACKINGINFO", Sub::TrackingInfo),
    ]
    .into_iter()
    .find(|(n, _)| name.eq_ignore_ascii_case(n))
    .map(|(_, s)| s)
}

/// Where a REDIRECT argument points.
enum Redirect {
    /// Not a positive integer: sent as it is (Redis answers it).
    Keep,
    /// No such proxy session: sent as an id no Redis client has.
    Missing,
    /// Proxy session `.0`, standing upstream as Redis client `.1`.
    Session(u64, u64),
}

fn error(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    reply::error(&mut out, text);
    out
}

impl Session {
    /// Before a local command consumes its request: `CLIENT TRACKING` waits until
    /// every earlier reply has arrived (it may move the session to a connection of
    /// its own; its outcome decides where later requests go).
    pub(super) fn tracking_waits(&self, route: Route, inbuf: &BytesMut, req: &Request) -> bool {
        if route != Route::Client {
            return false;
        }
        let ranged = Ranged {
            buf: &inbuf[..req.len.min(inbuf.len())],
            ranges: &self.args,
        };
        let tracking = match &req.kind {
            RequestKind::Inline(a) => sub(a),
            _ => sub(&ranged),
        };
        tracking == Some(Sub::Tracking)
    }

    /// Handles a local command that concerns tracking. `None`: not one (or nothing
    /// to do here); `Some(r)`: handled, `r` as `local()` returns it.
    pub(super) async fn tracking_local(
        &mut self,
        route: Route,
        args: &(dyn ArgList + Sync),
        cmd: u16,
    ) -> Option<Option<bool>> {
        if !self.state.authenticated {
            // `local::handle` answers NOAUTH.
            return None;
        }
        match route {
            Route::Client => match sub(args)? {
                Sub::Tracking => Some(self.client_tracking(args, cmd).await),
                s if self.tracking.is_some() => {
                    let hook =
                        (s != Sub::Caching && !self.mode.in_multi()).then_some(Hook::Redirect);
                    self.forward(encode(args), Target::Held, cmd, hook).await;
                    Some(None)
                }
                _ => None,
            },
            Route::Select if self.tracking.is_some() && args.count() == 2 => {
                let db = parse_int(args.arg(1)).and_then(|i| self.live.router.get(i))?;
                if db.same_server(&self.state.db) {
                    return None;
                }
                self.push_reply(error(&format!(
                    "ERR SELECT of database {} on another upstream server ({}) while CLIENT TRACKING is on is not supported by redis-sidecar",
                    db.label(),
                    db.config.upstream.address()
                )));
                Some(None)
            }
            Route::Auth | Route::Hello
                if self.tracking.is_some()
                    && self.live.config.auth_passthrough
                    && !(route == Route::Auth && self.logs_in_place())
                    && local::credentials(route, args, self.state.resp3).is_some() =>
            {
                self.push_reply(
                    b"-ERR AUTH while CLIENT TRACKING is on is not supported by redis-sidecar (turn tracking off first)\r\n"
                        .to_vec(),
                );
                Some(None)
            }
            _ => None,
        }
    }

    /// A RESP3 subscriber's tracking request that needs the proxy's help on its
    /// subscriber connection: `CLIENT TRACKING ON|OFF` (a `REDIRECT` names a proxy
    /// session), or `GETREDIR`/`TRACKINGINFO` while a redirect is on (the id
    /// comes back translated).
    pub(super) fn tracking_on_subscriber_wanted(&self, args: &dyn ArgList) -> bool {
        let Mode::Subscribed(s) = &self.mode else {
            return false;
        };
        if s.monitor || !self.state.resp3 {
            return false;
        }
        match sub(args) {
            Some(Sub::Tracking) => {
                args.count() >= 3
                    && [&b"ON"[..], b"OFF"]
                        .iter()
                        .any(|m| args.arg(2).eq_ignore_ascii_case(m))
            }
            Some(Sub::GetRedir | Sub::TrackingInfo) => s.redirect.is_some(),
            _ => false,
        }
    }

    /// Sends such a request on the subscriber connection (every earlier reply is
    /// in: its reply is the next one), its `REDIRECT` id translated; the reply
    /// is seen to in `on_pubsub_frame` ([`OnSubscriber`]). A `CLIENT REPLY SKIP`
    /// before it is kept by the proxy (the reply must still be read).
    pub(super) async fn tracking_on_subscriber(&mut self, args: &(dyn ArgList + Sync)) {
        let (bytes, then) = match sub(args) {
            Some(Sub::Tracking) => {
                let on = args.arg(2).eq_ignore_ascii_case(b"ON");
                match self.translate(args, on).await {
                    Ok((encoded, tracking)) => {
                        let redirect = tracking
                            .as_ref()
                            .and_then(|t| t.redirect.map(|id| (id, t.upstream_redirect)));
                        let before = matches!(&self.mode, Mode::Subscribed(s) if s.tracking);
                        if let Some(s) = self.mode.subscribed() {
                            s.asked_prefixes = tracking.map(|t| t.prefixes).unwrap_or_default();
                        }
                        (encoded, OnSubscriber::Switch(redirect, before))
                    }
                    Err(refused) => {
                        self.push_reply(refused);
                        return;
                    }
                }
            }
            _ => (encode(args), OnSubscriber::Back),
        };
        let silent = std::mem::take(&mut self.skip_next);
        if let Some(s) = self.mode.subscribed() {
            s.tracking_reply = Some((then, silent));
        }
        let off =
            matches!(sub(args), Some(Sub::Tracking)) && args.arg(2).eq_ignore_ascii_case(b"OFF");
        if off {
            self.tracking_off_parked();
        }
        self.send_to_subscriber(&Bytes::from(bytes), false, false)
            .await;
    }

    /// `CLIENT TRACKING OFF` while subscribed, with the session's tracking on its
    /// own connection parked apart (an `auth_passthrough` login): turned off there
    /// too (its reply not waited for), so no invalidation comes after it and the
    /// session does not track once back on that connection, as on Redis's one
    /// connection. (Until session 37 the parked connection went on tracking.)
    fn tracking_off_parked(&mut self) {
        if self.tracking.is_some()
            && self.send_parked(b"*3\r\n$6\r\nCLIENT\r\n$8\r\nTRACKING\r\n$3\r\nOFF\r\n")
        {
            self.tracking = None;
            self.publish();
        }
    }

    /// Sends `request` (one, its reply not waited for) on the session's own
    /// connection parked while it is subscribed; `false` if there is none. The
    /// pushes read there before it are queued for the client.
    pub(super) fn send_parked(&mut self, request: &'static [u8]) -> bool {
        let db = self.state.db.clone();
        let Some(p) = self.mode.subscribed().and_then(|s| s.parked.as_mut()) else {
            return false;
        };
        let batch = unanswered(Bytes::from_static(request), 1, self.state.id, &db);
        let before = p.held.conn.send(batch);
        for push in before {
            self.queue.push_back(Pending::Ready(push));
        }
        true
    }

    /// A frame of the subscriber connection, as the tracking on it makes it (the
    /// redirect id in replies and pushes translated back), and whether it is the
    /// reply of a request of [`Session::tracking_on_subscriber`] that the
    /// client asked not to get.
    pub(super) fn tracking_on_subscriber_frame(&mut self, frame: Bytes) -> (Bytes, bool) {
        let Some(s) = self
            .mode
            .subscribed()
            .filter(|s| s.redirect.is_some() || s.tracking_reply.is_some())
        else {
            return (frame, false);
        };
        let mut frame = match s.redirect {
            Some((id, upstream)) => broken_redirect(frame, upstream, id),
            None => frame,
        };
        let answers = crate::upstream::pubsub::answers_request(&frame)
            && crate::upstream::pubsub::confirmation(&frame).is_none();
        if !answers {
            return (frame, false);
        }
        let Some((then, silent)) = s.tracking_reply.take() else {
            return (frame, false);
        };
        match then {
            OnSubscriber::Switch(redirect, before) => {
                if &frame[..] == b"+OK\r\n" {
                    s.redirect = redirect;
                    // Redis adds the prefixes of an ON to those it holds.
                    let asked = std::mem::take(&mut s.asked_prefixes);
                    match (s.tracking && s.bcast, before) {
                        (false, _) => s.prefixes.clear(),
                        (true, false) => s.prefixes = asked,
                        (true, true) => add_prefixes(&mut s.prefixes, asked),
                    }
                } else if s.tracking != before {
                    // Refused: nothing changed (CLIENT LIST's flags neither).
                    s.tracking = before;
                    self.publish();
                }
            }
            OnSubscriber::Back => {
                if let Some((id, _)) = s.redirect {
                    frame = redirect_back(frame, id);
                }
            }
        }
        (frame, silent)
    }

    /// `CLIENT TRACKING …`.
    async fn client_tracking(&mut self, args: &(dyn ArgList + Sync), cmd: u16) -> Option<bool> {
        let mode = (args.count() >= 3).then(|| args.arg(2));
        let on = mode.is_some_and(|m| m.eq_ignore_ascii_case(b"ON"));
        let off = mode.is_some_and(|m| m.eq_ignore_ascii_case(b"OFF"));
        let target = if self.mode.held().is_some() {
            Target::Held
        } else {
            Target::Shared
        };
        if !on && !off {
            // Malformed: Redis's own error, from the connection the session uses.
            self.forward(encode(args), target, cmd, None).await;
            return None;
        }
        let standalone = self.state.db.cluster().is_none();
        if on {
            // Under WATCH: tracked on the watching connection, now the session's own.
            if let Err(refused) = self.owns_watch().await {
                self.push_reply(refused);
                return None;
            }
        }
        // (Under a WATCH whose connection was lost, outside MULTI, tracking goes
        // on, on a connection of the session's own, and so does the lost WATCH:
        // `lost_step` answers the transaction there.)
        if self.mode.in_multi()
            || self.lost.as_ref().is_some_and(|l| l.multi)
            || (on && standalone && matches!(self.mode, Mode::Exclusive(_)))
        {
            let refusal = self.transaction_refusal("CLIENT TRACKING", "is");
            self.push_reply(refusal);
            self.refused_in_multi();
            return None;
        }
        if on && self.state.db.cluster().is_some() {
            // Redis tracks per node: the keys of one client live on several.
            self.push_reply(
                b"-ERR CLIENT TRACKING on a Redis Cluster database is not supported by redis-sidecar\r\n"
                    .to_vec(),
            );
            return None;
        }
        if on && !self.mode.is_private() && !self.revive_dormant().await {
            // A connection of its own, where Redis will send the invalidations.
            let resp3 = self.state.resp3;
            if let Err(refused) = self.open_private(resp3).await {
                self.push_reply(refused);
                return None;
            }
        }
        // Published first: a session may redirect to itself.
        self.publish();
        let (encoded, tracking) = match self.translate(args, on).await {
            Ok(t) => t,
            Err(refused) => {
                self.push_reply(refused);
                self.after_switch();
                return None;
            }
        };
        let target = if self.mode.held().is_some() {
            Target::Held
        } else {
            Target::Shared
        };
        self.forward(encoded, target, cmd, Some(Hook::Switch(tracking)))
            .await;
        // Later requests wait for the outcome: it decides where they go.
        Some(true)
    }

    /// The request with every REDIRECT id translated for Redis (options walked as
    /// Redis walks them), and the tracking state it asks for.
    async fn translate(
        &self,
        args: &(dyn ArgList + Sync),
        on: bool,
    ) -> Result<(Vec<u8>, Option<Tracking>), Vec<u8>> {
        let n = args.count();
        let mut out: Vec<Vec<u8>> = (0..n).map(|i| args.arg(i).to_vec()).collect();
        let mut tracking = Tracking {
            redirect: None,
            upstream_redirect: 0,
            bcast: false,
            prefixes: Vec::new(),
        };
        let mut j = 3;
        while j < n {
            let more = j + 1 < n;
            let opt = args.arg(j);
            if opt.eq_ignore_ascii_case(b"REDIRECT") && more {
                j += 1;
                match self.redirect_target(args.arg(j)).await? {
                    Redirect::Keep => {}
                    Redirect::Missing => out[j] = i64::MAX.to_string().into_bytes(),
                    Redirect::Session(id, upstream) => {
                        out[j] = upstream.to_string().into_bytes();
                        if tracking.redirect.is_none() {
                            tracking.redirect = Some(id);
                            tracking.upstream_redirect = upstream;
                        }
                    }
                }
            } else if opt.eq_ignore_ascii_case(b"PREFIX") && more {
                j += 1;
                tracking.prefixes.push(args.arg(j).to_vec());
            } else if opt.eq_ignore_ascii_case(b"BCAST") {
                tracking.bcast = true;
            }
            j += 1;
        }
        if tracking.prefixes.is_empty() {
            tracking.prefixes.push(Vec::new());
        }
        Ok((encode(&out[..]), on.then_some(tracking)))
    }

    /// What a REDIRECT argument names upstream (`Err`: the reply, when no
    /// connection could stand for a session that has none).
    async fn redirect_target(&self, arg: &[u8]) -> Result<Redirect, Vec<u8>> {
        let Some(id) = parse_int(arg).filter(|&id| id > 0).map(|id| id as u64) else {
            return Ok(Redirect::Keep);
        };
        let Some(client) = self.ctx.clients.get(id) else {
            return Ok(Redirect::Missing);
        };
        let db = &self.state.db;
        if db.cluster().is_none() {
            // The stand-in that lives as long as the session, once it has one.
            if let Some(up) = client.push_id(&db.config.upstream) {
                return Ok(Redirect::Session(id, up));
            }
        }
        // A RESP2 client's private connection (tracking, `auth_passthrough`) is
        // not subscribed (its subscriptions get a connection of their own), so
        // Redis would drop what it sends there even once the client subscribes.
        let pushed = {
            let info = client.info();
            info.resp == 3 || info.pubsub
        };
        let own = client
            .own()
            .filter(|_| pushed || db.cluster().is_some())
            .filter(|o| o.db.config.upstream.same_redis(&db.config.upstream))
            .map(|o| o.upstream_id.load(Relaxed))
            .filter(|&up| up != 0);
        if let Some(up) = own {
            // Kept as its push connection when it lets go of it.
            if db.cluster().is_none() {
                client.hand_out(up);
            }
            return Ok(Redirect::Session(id, up));
        }
        let sink = if db.cluster().is_none() {
            // The target's own stand-in for as long as it lives: Redis pushes to a
            // RESP3 target, subscribed or not, and sends a RESP2 target messages
            // while it is subscribed, whenever that is (`on_redirected_push`); once
            // the target is gone, the redirecting clients are told.
            let limit = self.live.config.limits.pubsub_buffer_limit;
            self.ctx.clients.push_sink_id(&client, db, limit).await
        } else {
            self.ctx.clients.sink_id(db).await
        };
        match sink {
            Ok(up) => Ok(Redirect::Session(id, up)),
            Err(e) => Err(error(&error_text(db, &e, 1))),
        }
    }

    /// Sends `bytes` (one request) to `target`; `hook` acts on its reply.
    pub(super) async fn forward(
        &mut self,
        bytes: Vec<u8>,
        target: Target,
        cmd: u16,
        hook: Option<Hook>,
    ) {
        if target == Target::Held {
            // Inside MULTI, Redis queues it.
            self.transaction_step(TxOp::None);
        }
        self.last = match (target, self.mode.held()) {
            (Target::Held, Some(h)) => Conn::Held(h.id),
            _ => self.shared_conn(),
        };
        let mut cmds = CmdList::new();
        cmds.push(cmd);
        let out = Outgoing {
            bytes: Bytes::from(bytes),
            count: 1,
            target,
            cmds,
            readonly: false,
            block: Block::No,
            silent: std::mem::take(&mut self.skip_next),
            select_after: None,
        };
        let db = self.state.db.clone();
        let before = self.queue.len();
        self.send(db, out).await;
        let queued = self.queue.len() > before;
        match self.queue.back_mut() {
            Some(Pending::Upstream(sent)) if queued => sent.hook = hook,
            // Refused before it was sent (circuit open): nothing changes.
            _ if matches!(hook, Some(Hook::Switch(_))) => self.after_switch(),
            _ => {}
        }
    }

    /// After a `CLIENT TRACKING` request was answered (or refused): with tracking
    /// off and no other reason to keep it, the session's own connection is let go.
    fn after_switch(&mut self) {
        if self.tracking.is_none() && self.login.is_none() {
            if let Mode::Private(p) = &self.mode {
                if !p.held.in_multi && !p.held.watching {
                    self.release(false);
                }
            }
        }
        self.publish();
    }

    /// The reply of a batch sent to the tracking connection (`shared`: it was not),
    /// after `hook`: redirect ids translated back, tracking switched.
    pub(super) fn tracking_reply(
        &mut self,
        hook: Option<Hook>,
        shared: bool,
        bytes: Bytes,
    ) -> Bytes {
        let mut bytes = bytes;
        if !shared {
            if let Some(Tracking {
                redirect: Some(id),
                upstream_redirect,
                ..
            }) = self.tracking
            {
                bytes = broken_redirect(bytes, upstream_redirect, id);
            }
        }
        match hook {
            None => bytes,
            Some(Hook::Switch(tracking)) => {
                if &bytes[reply_at(&bytes)..] == b"+OK\r\n" {
                    if let (Some(_), Some(p)) = (&tracking, self.mode.private_mut()) {
                        p.tracked = true;
                    }
                    self.tracking = match (tracking, self.tracking.take()) {
                        // Redis adds the prefixes to those the client has.
                        (Some(mut new), Some(old)) if new.bcast && old.bcast => {
                            add_prefixes(&mut new.prefixes, old.prefixes);
                            Some(new)
                        }
                        (new, _) => new,
                    };
                }
                self.after_switch();
                bytes
            }
            Some(Hook::Login(login)) => {
                if &bytes[reply_at(&bytes)..] == b"+OK\r\n" {
                    self.logged_in(*login);
                }
                bytes
            }
            Some(Hook::Redirect) => match &self.tracking {
                Some(Tracking {
                    redirect: Some(id), ..
                }) => redirect_back(bytes, *id),
                _ => bytes,
            },
        }
    }

    /// `CLIENT TRACKING` is on, in `BCAST` mode, on the session's own connection.
    pub(super) fn tracks_bcast(&self) -> bool {
        self.tracking.as_ref().is_some_and(|t| t.bcast)
    }

    /// Whether the invalidations of keys on the session's own connection are
    /// all its own `BCAST` ones, to be held and merged: not once another
    /// client's `REDIRECT` named that connection, where Redis sends that
    /// client's invalidations (at once, not after the read) that no byte tells
    /// apart (the multi-session tool, seed 8864: two pushes of one key merged).
    pub(super) fn holds_bcast(&self) -> bool {
        self.tracks_bcast() && !self.client.handed_out()
    }

    /// Invalidations of keys Redis sent a `BCAST` client after a batch of one of
    /// its reads: they go after every reply of that read, as Redis sends them
    /// once it has run the whole read (`beforeSleep`), where the proxy may have
    /// split the read into several batches or answered part of it itself. While
    /// the read's later requests wait (`stalled`) they are held until it is
    /// dispatched ([`Session::release_bcast`]); otherwise every request of the
    /// read is queued already and they go at the end of the queue.
    pub(super) fn hold_bcast(&mut self, pushes: Bytes) {
        if self.stalled {
            self.bcast_held.push(pushes);
        } else {
            self.queue_bcast(pushes);
        }
    }

    /// Queues a `BCAST` client's invalidations of keys after everything queued;
    /// invalidations queued before them and not yet written (those of an earlier
    /// batch of the same read, whose later batch was still in flight) become one
    /// with them, as Redis sends the keys of a whole read at once: one push per
    /// prefix ([`merge_key_pushes`]).
    fn queue_bcast(&mut self, pushes: Bytes) {
        let prefixes = match &self.tracking {
            Some(t) => &t.prefixes[..],
            None => &[],
        };
        queue_merged(&mut self.queue, pushes, prefixes);
    }

    /// A RESP3 subscriber that tracks in `BCAST` mode on its subscriber
    /// connection: an invalidation of keys read there (`frame`) is held while
    /// the read being dispatched waits (`stalled`) or replies to requests
    /// written there are still to come, so that it follows them, as Redis sends
    /// a `BCAST` client's invalidations once it has run the whole read; the
    /// requests written there are sent one by one, and Redis answers each on
    /// its own. Held until as many requests as were unanswered when the read
    /// was dispatched are answered ([`Session::sub_bcast_answered`]), not
    /// longer: a client that pipelines without a pause still gets them.
    /// `false`: not held (passed on as it came; always on a cluster).
    pub(super) fn hold_sub_bcast(&mut self, frame: &Bytes) -> bool {
        let stalled = self.stalled;
        // (On a cluster the subscriber connection is one node's, which sees
        // only its own keys: left as it comes.)
        let standalone = self.state.db.cluster().is_none();
        let Some(s) = self
            .mode
            .subscribed()
            .filter(|s| s.tracking && s.bcast && standalone)
        else {
            return false;
        };
        if !names_keys(frame) || self.client.handed_out() {
            return false;
        }
        let pending = s.home.pending();
        if !stalled && pending == 0 && s.bcast_held.is_empty() {
            return false;
        }
        s.bcast_held.push(frame.clone());
        if !stalled && s.bcast_due.is_none() {
            s.bcast_due = Some(pending);
        }
        true
    }

    /// After a frame of the subscriber connection (`pending`: requests
    /// unanswered before it): once the requests the held invalidations wait for
    /// are answered, they follow, with those Redis wrote right behind the last
    /// reply (read already, taken off the connection here); the first other
    /// frame taken off is returned, to be handled next.
    pub(super) fn sub_bcast_answered(&mut self, pending: usize) -> Option<Result<Bytes, End>> {
        let s = self.mode.subscribed()?;
        let due = s.bcast_due?;
        let due = due.saturating_sub(pending.saturating_sub(s.home.pending()));
        s.bcast_due = Some(due);
        if due > 0 {
            return None;
        }
        self.release_sub_bcast_read()
    }

    /// The read whose requests the held invalidations of a subscriber waited
    /// for was dispatched: they wait for the requests written and not yet
    /// answered (follow at once if none).
    pub(super) fn sub_bcast_dispatched(&mut self) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if s.bcast_due.is_some() || s.bcast_held.is_empty() {
            return;
        }
        let pending = s.home.pending();
        s.bcast_due = Some(pending);
        if pending == 0 {
            // (What else was read already is handled here, in order.)
            if let Some(f) = self.release_sub_bcast_read() {
                self.pubsub_frames(f);
            }
        }
    }

    /// The held invalidations of a subscriber follow what is queued, with
    /// those Redis wrote right behind the last reply they waited for (read
    /// already: taken off the connection here, as Redis sent them all at once);
    /// the first other frame taken off is returned, to be handled next.
    fn release_sub_bcast_read(&mut self) -> Option<Result<Bytes, End>> {
        let s = self.mode.subscribed()?;
        let next = loop {
            match s.sub.try_next() {
                Some(Ok(f)) if names_keys(&f) => s.bcast_held.push(f),
                other => break other,
            }
        };
        self.release_sub_bcast();
        next
    }

    /// The held invalidations of a subscriber follow what is queued (dropped if
    /// the read turned `BCAST` tracking off: Redis would not send them).
    fn release_sub_bcast(&mut self) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        s.bcast_due = None;
        let held = std::mem::take(&mut s.bcast_held);
        if s.tracking && s.bcast {
            for pushes in held {
                queue_merged(&mut self.queue, pushes, &s.prefixes);
            }
        }
    }

    /// The read whose later requests waited is dispatched: the invalidations
    /// held meanwhile follow its replies, unless the client no longer tracks in
    /// `BCAST` mode (a `RESET` in the read: Redis would not send them then).
    pub(super) fn release_bcast(&mut self) {
        let held = std::mem::take(&mut self.bcast_held);
        if self.tracks_bcast() {
            for pushes in held {
                self.queue_bcast(pushes);
            }
        }
    }

    /// A push the session's own connection sent while no command was in flight, or
    /// the end of its pushes.
    pub(super) fn on_push(&mut self, push: Result<Bytes, End>) {
        match push {
            // (After the rest of the read, if one waits.)
            Ok(push) if names_keys(&push) && self.holds_bcast() => self.hold_bcast(push),
            Ok(push) => {
                let push = match self.tracking {
                    Some(Tracking {
                        redirect: Some(id),
                        upstream_redirect,
                        ..
                    }) => broken_redirect(push, upstream_redirect, id),
                    _ => push,
                };
                self.queue.push_back(Pending::Ready(push));
            }
            Err(End::Overflow) => self.too_slow_for_pushes(),
            Err(End::Closed) if self.tracking.is_some() || self.login.is_some() => {
                // Tracking: its cache would never be invalidated again. A login
                // (`auth_passthrough`): Redis closed the user's connection (`ACL
                // DELUSER`, `CLIENT KILL`, a restart). Either way, as with Redis,
                // the client's connection closes at once and its library starts
                // afresh (not at its next command, with an error first).
                tracing::info!(
                    session = self.state.id,
                    "own upstream connection closed ({}); closing the client",
                    if self.tracking.is_some() {
                        "tracking"
                    } else {
                        "login"
                    }
                );
                self.queue.clear();
                self.done = true;
            }
            // Otherwise the next command finds the connection gone.
            Err(End::Closed) => {}
        }
    }

    /// Takes the push connection another session's redirect opened for this one
    /// (`Clients::push_sink_id`), if any.
    pub(super) fn take_push_conn(&mut self) {
        if let Some(conn) = self.client.take_push_conn() {
            self.push_conn = Some(Box::new(super::stand_in::StandIn::Opened(conn)));
        }
    }

    /// What Redis pushed on the push connection (invalidations redirected here):
    /// written as Redis writes them to this client as it is now: a RESP3 client
    /// gets the push, a subscribed RESP2 client a message on
    /// `__redis__:invalidate`, any other RESP2 client nothing.
    pub(super) fn on_redirected_push(&mut self, push: Result<Bytes, End>) {
        match push {
            Ok(push) if self.state.resp3 => self.queue.push_back(Pending::Ready(push)),
            Ok(push) if matches!(self.mode, Mode::Subscribed(_)) => {
                if let Some(message) = invalidation_message(&push) {
                    self.queue.push_back(Pending::Ready(message));
                }
            }
            Ok(_) => {}
            Err(End::Overflow) => self.too_slow_for_pushes(),
            Err(End::Closed) => {
                // The redirecting clients get Redis's `tracking-redir-broken`.
                self.push_conn = None;
                self.client.push_conn_closed();
                if self.state.resp3 || matches!(self.mode, Mode::Subscribed(_)) {
                    // To Redis this client has left; one that would be getting
                    // the invalidations is closed (as when its subscriber or
                    // tracking connection is lost), so that its library connects
                    // again and sets up its caching anew, rather than wait for
                    // invalidations that no longer come.
                    tracing::info!(
                        session = self.state.id,
                        "push connection (CLIENT TRACKING REDIRECT target) lost; closing the client"
                    );
                    self.close_when_answered();
                }
            }
        }
    }

    /// Invalidation messages piled up beyond `pubsub_buffer_limit` (the client
    /// does not read them): it is disconnected, as Redis does.
    fn too_slow_for_pushes(&mut self) {
        tracing::warn!(
            session = self.state.id,
            peer = %self.state.peer,
            limit = self.live.config.limits.pubsub_buffer_limit,
            "disconnecting slow client: invalidation messages beyond limits.pubsub_buffer_limit"
        );
        self.queue.clear();
        self.done = true;
    }

    /// The session's own upstream connection (for REDIRECT from other sessions):
    /// its subscriber connection while subscribed, else its private one.
    pub(super) fn own_conn(&self) -> Option<Exclusive> {
        match &self.mode {
            Mode::Subscribed(s) => Some(Exclusive {
                db: self.state.db.clone(),
                upstream_id: s.sub.upstream_id(),
                moving: None,
            }),
            Mode::Private(p) => Some(Exclusive {
                db: p.db.clone(),
                upstream_id: p.held.conn.upstream_id(),
                moving: None,
            }),
            _ => None,
        }
    }

    /// Whether Redis may push on the session's own connection (a RESP3
    /// private connection whose pushes are read).
    pub(super) fn own_pushes(&self) -> bool {
        matches!(&self.mode, Mode::Private(p) if p.resp3 && p.held.conn.watches_pushes())
    }

    /// What CLIENT LIST shows of tracking: `redir=` and BCAST.
    pub(super) fn tracking_info(&self) -> Option<(i64, bool)> {
        match &self.mode {
            // Tracking on the subscriber connection.
            Mode::Subscribed(s) if s.tracking && self.tracking.is_none() => {
                Some((s.redirect.map_or(0, |(id, _)| id as i64), s.bcast))
            }
            _ => self
                .tracking
                .as_ref()
                .map(|t| (t.redirect.map_or(0, |r| r as i64), t.bcast)),
        }
    }

    /// `HELLO 2|3` while tracking (or watching keys on the session's own
    /// connection): the connection switches protocol in place (a new connection
    /// would not track what the client has cached, nor watch its keys). The
    /// client gets the proxy's HELLO reply, not this one's.
    pub(super) async fn tracking_switch_protocol(&mut self) -> Result<(), Vec<u8>> {
        let resp3 = self.state.resp3;
        match &mut self.mode {
            Mode::Private(p) if p.db.same_server(&self.state.db) => p.resp3 = resp3,
            _ => {
                return Err(error(
                    "ERR the tracking connection cannot follow this change (redis-sidecar)",
                ))
            }
        }
        let hello = encode(&[&b"HELLO"[..], if resp3 { b"3" } else { b"2" }][..]);
        self.send_silently(hello, 1).await;
        Ok(())
    }

    /// Sends `count` requests of the proxy's own to the session's private
    /// connection, in line with the session's requests; their replies are not
    /// the client's.
    pub(super) async fn send_silently(&mut self, bytes: Vec<u8>, count: u32) {
        let mut cmds = CmdList::new();
        for _ in 0..count {
            cmds.push(table::COUNT as u16);
        }
        let out = Outgoing {
            bytes: Bytes::from(bytes),
            count,
            target: Target::Held,
            cmds,
            readonly: false,
            block: Block::No,
            silent: true,
            select_after: None,
        };
        let db = self.state.db.clone();
        self.send(db, out).await;
    }
}

/// Where the reply proper starts in `bytes`, after the pushes in front of it.
fn reply_at(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Ok(Some(frame)) = reply::scan(&bytes[at..]) {
        if !frame.is_push || at + frame.len >= bytes.len() {
            break;
        }
        at += frame.len;
    }
    at
}

/// A batch of `count` requests sent on a session's own connection whose replies
/// nobody waits for (`origin`: the session).
pub(super) fn unanswered(
    bytes: Bytes,
    count: u32,
    origin: u64,
    db: &crate::router::Database,
) -> crate::upstream::mux::Batch {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Kept until answered: a batch whose receiver is gone counts as abandoned,
    // and the connection would be dropped.
    tokio::spawn(async move {
        let _ = rx.await;
    });
    crate::upstream::mux::Batch {
        bytes,
        count,
        reply: tx,
        block: Block::No,
        retry: crate::upstream::mux::Retry::new(origin, false, &db.config.upstream),
        divert: None,
        may_hold: false,
    }
}

/// The start of every invalidation push.
pub(super) const INVALIDATE: &[u8] = b">2\r\n$10\r\ninvalidate\r\n";

/// Only the pushes of `bytes` (what a client that turned replies off still
/// gets); `keys: false`, without invalidations that name keys.
pub(super) fn pushes_only(bytes: &Bytes, keys: bool) -> Bytes {
    if !bytes.contains(&b'>') {
        return Bytes::new();
    }
    frames_where(bytes, |frame, at| {
        frame.is_push && (keys || !names_keys(&bytes[at..]))
    })
}

/// `bytes` without its invalidations that name keys.
pub(super) fn without_key_pushes(bytes: Bytes) -> Bytes {
    if !bytes.contains(&b'>') {
        return bytes;
    }
    frames_where(&bytes, |frame, at| {
        !(frame.is_push && names_keys(&bytes[at..]))
    })
}

/// `bytes` split after its last frame that is not an invalidation naming keys:
/// the replies (and any pushes among or before them), and the key
/// invalidations after them, if any.
pub(super) fn split_trailing_key_pushes(mut bytes: Bytes) -> (Bytes, Option<Bytes>) {
    if !bytes.contains(&b'>') {
        return (bytes, None);
    }
    let (mut at, mut end) = (0, 0);
    while let Ok(Some(frame)) = reply::scan(&bytes[at..]) {
        if !(frame.is_push && names_keys(&bytes[at..])) {
            end = at + frame.len;
        }
        at += frame.len;
    }
    // (None after the replies, or bytes that are not whole frames: as they are.)
    if end == at || at != bytes.len() {
        return (bytes, None);
    }
    let pushes = bytes.split_off(end);
    (bytes, Some(pushes))
}

/// Invalidations of keys (`>2 invalidate [keys]`, back to back) for a `BCAST`
/// client whose prefixes are `prefixes`, as Redis sends those of one turn of its
/// event loop (`trackingBroadcastInvalidationMessages`): for each prefix, in
/// byte order, one push naming the keys under it, in byte order, each once.
/// Each push given is Redis's for one prefix: the first of the client's under
/// which all its keys lie, after the previous push's (Redis sends a turn's in
/// that order, and a key under two prefixes, one a prefix of the other, in
/// both), else the first (a later turn's); merged are only the keys of pushes
/// of the same prefix, so a part of a turn stays a part. `None` for anything
/// else among `pushes`, or a push under none of `prefixes`.
pub(super) fn merge_key_pushes(pushes: &[u8], prefixes: &[Vec<u8>]) -> Option<Bytes> {
    use std::collections::{BTreeMap, BTreeSet};
    let mut prefixes: Vec<&[u8]> = prefixes.iter().map(Vec::as_slice).collect();
    prefixes.sort_unstable();
    prefixes.dedup();
    let mut groups: BTreeMap<&[u8], BTreeSet<&[u8]>> = BTreeMap::new();
    let mut last: Option<&[u8]> = None;
    let mut at = 0;
    while at < pushes.len() {
        let frame = reply::scan(&pushes[at..]).ok()??;
        let array = pushes[at..at + frame.len].strip_prefix(INVALIDATE)?;
        let mut keys = Vec::new();
        for (item, out_of_band) in reply::items(array)? {
            let key = super::prefix::bulk_at(item, 0).map(|(key, _)| key);
            keys.push(key.filter(|_| !out_of_band)?);
        }
        let mut under = prefixes
            .iter()
            .copied()
            .filter(|p| keys.iter().all(|k| k.starts_with(p)));
        let first = under.clone().next()?;
        let prefix = under
            .find(|p| last.is_some_and(|l| *p > l))
            .unwrap_or(first);
        last = Some(prefix);
        groups.entry(prefix).or_default().extend(keys);
        at += frame.len;
    }
    let mut out = Vec::with_capacity(pushes.len());
    for keys in groups.values() {
        out.extend_from_slice(INVALIDATE);
        reply::array_header(&mut out, keys.len());
        for key in keys {
            reply::bulk(&mut out, key);
        }
    }
    Some(Bytes::from(out))
}

/// Adds to `prefixes` those of `more` it does not hold (Redis keeps a client's
/// `BCAST` prefixes as a set).
fn add_prefixes(prefixes: &mut Vec<Vec<u8>>, more: Vec<Vec<u8>>) {
    for p in more {
        if !prefixes.contains(&p) {
            prefixes.push(p);
        }
    }
}

/// Queues `pushes` (a `BCAST` client's invalidations of keys) after everything
/// queued, one with those queued before them and not yet written.
fn queue_merged(
    queue: &mut std::collections::VecDeque<Pending>,
    pushes: Bytes,
    prefixes: &[Vec<u8>],
) {
    match queue.back_mut() {
        Some(Pending::Pushes(before)) => {
            let both = [&before[..], &pushes[..]].concat();
            *before = merge_key_pushes(&both, prefixes).unwrap_or_else(|| both.into());
        }
        _ => {
            let pushes = merge_key_pushes(&pushes, prefixes).unwrap_or(pushes);
            queue.push_back(Pending::Pushes(pushes));
        }
    }
}

/// Whether the frame at the start of `bytes` is an invalidation naming keys.
fn names_keys(bytes: &[u8]) -> bool {
    bytes
        .strip_prefix(INVALIDATE)
        .is_some_and(|k| k.starts_with(b"*"))
}

/// The frames of `bytes` that `keep` (given a frame and where it starts) keeps.
fn frames_where(bytes: &Bytes, keep: impl Fn(&reply::Frame, usize) -> bool) -> Bytes {
    let mut out = BytesMut::new();
    let mut at = 0;
    while let Ok(Some(frame)) = reply::scan(&bytes[at..]) {
        if keep(&frame, at) {
            out.extend_from_slice(&bytes[at..at + frame.len]);
        }
        at += frame.len;
    }
    out.freeze()
}

/// `tracking-redir-broken` pushes naming `upstream` name proxy session `id`.
fn broken_redirect(bytes: Bytes, upstream: u64, id: u64) -> Bytes {
    const PUSH: &[u8] = b">2\r\n$21\r\ntracking-redir-broken\r\n:";
    let from = format!("{upstream}\r\n");
    let needle = [PUSH, from.as_bytes()].concat();
    if !bytes.windows(needle.len()).any(|w| w == needle) {
        return bytes;
    }
    let to = [PUSH, format!("{id}\r\n").as_bytes()].concat();
    let mut out = BytesMut::with_capacity(bytes.len() + 16);
    let mut at = 0;
    while let Ok(Some(frame)) = reply::scan(&bytes[at..]) {
        let f = &bytes[at..at + frame.len];
        out.extend_from_slice(if f == needle { &to } else { f });
        at += frame.len;
    }
    out.extend_from_slice(&bytes[at..]);
    out.freeze()
}

/// An invalidation push (`>2 invalidate <keys | null>`) as Redis sends it to a
/// subscribed RESP2 redirect target: a message on `__redis__:invalidate`. A
/// flush's null is passed as it came: Redis writes the null of the *tracking*
/// client's protocol (`$-1` from a RESP2 one, `_` from a RESP3 one) to the
/// target whatever the target speaks, and so it came to the push connection.
/// `None` for any other push.
fn invalidation_message(push: &[u8]) -> Option<Bytes> {
    const MESSAGE: &[u8] = b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n";
    let keys = push.strip_prefix(INVALIDATE)?;
    Some(Bytes::from([MESSAGE, keys].concat()))
}

/// The reply of GETREDIR (`:N`) or TRACKINGINFO (`redirect` → `:N`) with a
/// positive N replaced by proxy session `id`.
fn redirect_back(bytes: Bytes, id: u64) -> Bytes {
    let at = reply_at(&bytes);
    let body = &bytes[at..];
    const KEY: &[u8] = b"$8\r\nredirect\r\n:";
    let num = if body.starts_with(b":") {
        1
    } else {
        match body.windows(KEY.len()).position(|w| w == KEY) {
            Some(p) => p + KEY.len(),
            None => return bytes,
        }
    };
    let Some(len) = body[num..].iter().position(|&b| b == b'\r') else {
        return bytes;
    };
    if parse_int(&body[num..num + len]).is_none_or(|n| n <= 0) {
        return bytes;
    }
    let mut out = BytesMut::with_capacity(bytes.len() + 16);
    out.extend_from_slice(&bytes[..at + num]);
    out.extend_from_slice(id.to_string().as_bytes());
    out.extend_from_slice(&body[num + len..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PUSH: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n";

    #[test]
    fn translates_redirect_ids_back() {
        let getredir = Bytes::from_static(b":42\r\n");
        assert_eq!(redirect_back(getredir, 7).as_ref(), b":7\r\n");
        for keep in [&b":0\r\n"[..], b":-1\r\n"] {
            assert_eq!(redirect_back(Bytes::from_static(keep), 7).as_ref(), keep);
        }
        let info = Bytes::from(
            [
                PUSH,
                b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:42\r\n$8\r\nprefixes\r\n*0\r\n",
            ]
            .concat(),
        );
        assert_eq!(
            redirect_back(info, 7).as_ref(),
            [
                PUSH,
                b"*6\r\n$5\r\nflags\r\n*1\r\n$2\r\non\r\n$8\r\nredirect\r\n:7\r\n$8\r\nprefixes\r\n*0\r\n",
            ]
            .concat()
            .as_slice()
        );
    }

    #[test]
    fn finds_the_reply_behind_pushes_and_keeps_pushes_of_silent_replies() {
        let both = Bytes::from([PUSH, b"+OK\r\n", PUSH].concat());
        assert_eq!(&both[reply_at(&both)..], [&b"+OK\r\n"[..], PUSH].concat());
        assert_eq!(
            pushes_only(&both, true).as_ref(),
            [PUSH, PUSH].concat().as_slice()
        );
        assert!(pushes_only(&Bytes::from_static(b"+OK\r\n"), true).is_empty());
        let keys = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n";
        let flush = b">2\r\n$10\r\ninvalidate\r\n_\r\n";
        let mixed = Bytes::from([&keys[..], flush, b"+PONG\r\n", keys].concat());
        assert_eq!(pushes_only(&mixed, false).as_ref(), flush);
        assert_eq!(pushes_only(&mixed, true), [&keys[..], flush, keys].concat());
        assert_eq!(
            without_key_pushes(mixed).as_ref(),
            [&flush[..], b"+PONG\r\n"].concat().as_slice()
        );
        let only_push = Bytes::from_static(PUSH);
        assert_eq!(reply_at(&only_push), 0);
    }

    #[test]
    fn splits_off_the_key_invalidations_after_the_last_reply() {
        let keys: &[u8] = b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n";
        let flush: &[u8] = b">2\r\n$10\r\ninvalidate\r\n_\r\n";
        let split = |parts: &[&[u8]]| split_trailing_key_pushes(Bytes::from(parts.concat()));
        // After the last reply: split off, both of them.
        let (replies, after) = split(&[keys, b"+OK\r\n", b":1\r\n", keys, keys]);
        assert_eq!(replies, [keys, b"+OK\r\n", b":1\r\n"].concat());
        assert_eq!(after.as_deref(), Some([keys, keys].concat().as_slice()));
        // None after it, or a flush's last (sent at once, not held): as it is.
        for parts in [
            &[keys, b"+OK\r\n"][..],
            &[b"+OK\r\n", keys, flush],
            &[b"+OK\r\n"],
        ] {
            let (replies, after) = split(parts);
            assert_eq!((replies, after), (Bytes::from(parts.concat()), None));
        }
    }

    #[test]
    fn merges_key_invalidations_as_redis_sends_those_of_one_turn() {
        let push = |keys: &[&str]| {
            let mut out = INVALIDATE.to_vec();
            reply::array_header(&mut out, keys.len());
            for k in keys {
                reply::bulk(&mut out, k.as_bytes());
            }
            out
        };
        let merge = |parts: &[Vec<u8>], prefixes: &[&str]| {
            let prefixes: Vec<Vec<u8>> = prefixes.iter().map(|p| p.as_bytes().to_vec()).collect();
            merge_key_pushes(&parts.concat(), &prefixes).map(|b| b.to_vec())
        };
        // One prefix (none given): the keys sorted, each once.
        assert_eq!(
            merge(&[push(&["b", "ab"]), push(&["a", "b"])], &[""]),
            Some(push(&["a", "ab", "b"]))
        );
        // Several: one push per prefix, in byte order.
        assert_eq!(
            merge(&[push(&["b1"]), push(&["a1"]), push(&["a0"])], &["b", "a"]),
            Some([push(&["a0", "a1"]), push(&["b1"])].concat())
        );
        // A key under two prefixes is in both pushes of its turn (prefixes "" and
        // "b"): turns told apart by the order of their pushes.
        let (all, b) = (push(&["b1", "c"]), push(&["b1"]));
        assert_eq!(
            merge(&[all.clone(), b.clone(), push(&["a"])], &["b", ""]),
            Some([push(&["a", "b1", "c"]), b.clone()].concat())
        );
        assert_eq!(
            merge(&[b.clone(), b.clone(), b.clone(), b.clone()], &["b", ""]),
            Some([b.clone(), b.clone()].concat())
        );
        // A part of a turn (its other push written already) stays a part.
        assert_eq!(merge(std::slice::from_ref(&b), &["b", ""]), Some(b.clone()));
        // A key under no prefix, a flush's null, another push, bytes that do not
        // scan: not merged.
        let flush = b">2\r\n$10\r\ninvalidate\r\n_\r\n".to_vec();
        let message = b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n".to_vec();
        assert_eq!(merge(&[push(&["c"])], &["a"]), None);
        assert_eq!(merge(&[push(&["a"]), flush], &[""]), None);
        assert_eq!(merge(&[push(&["a"]), message], &[""]), None);
        assert_eq!(merge(&[push(&["a"])[..20].to_vec()], &[""]), None);
    }

    #[test]
    fn invalidation_pushes_become_messages_for_resp2() {
        assert_eq!(
            invalidation_message(PUSH).as_deref(),
            Some(&b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n*1\r\n$1\r\nk\r\n"[..])
        );
        assert_eq!(
            invalidation_message(b">2\r\n$10\r\ninvalidate\r\n_\r\n").as_deref(),
            Some(&b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n_\r\n"[..])
        );
        assert_eq!(
            invalidation_message(b">2\r\n$10\r\ninvalidate\r\n$-1\r\n").as_deref(),
            Some(&b"*3\r\n$7\r\nmessage\r\n$20\r\n__redis__:invalidate\r\n$-1\r\n"[..])
        );
        assert_eq!(
            invalidation_message(b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$1\r\nm\r\n"),
            None
        );
    }

    #[test]
    fn translates_broken_redirect_pushes() {
        let push = b">2\r\n$21\r\ntracking-redir-broken\r\n:42\r\n";
        let bytes = Bytes::from([&push[..], b"+OK\r\n"].concat());
        assert_eq!(
            broken_redirect(bytes, 42, 7).as_ref(),
            b">2\r\n$21\r\ntracking-redir-broken\r\n:7\r\n+OK\r\n"
        );
        let other = Bytes::from_static(b">2\r\n$21\r\ntracking-redir-broken\r\n:43\r\n");
        assert_eq!(broken_redirect(other.clone(), 42, 7), other);
    }
}
