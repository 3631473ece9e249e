//! The session while subscribed: requests go to the subscriber connection, every
//! frame from it is streamed back in arrival order, and the proxy's own replies
//! wait behind a barrier so they never overtake a confirmation.

use std::time::Duration;

use bytes::Bytes;

use super::follow::HeldConn;
use super::mode::{Held, Mode, MonitorEnd, Private, Queued};
use super::queue::Pending;
use super::Session;
use crate::command::{each_request, ArgList, Descriptor, TxOp};
use crate::config::UpstreamConfig;
use crate::protocol::reply;
use crate::protocol::request::encode_command;
use crate::router::Database;
use crate::upstream::pubsub::{self, End, Subscription};
use crate::upstream::UpstreamError;

/// Most attempts at subscribing a moved shard channel again.
const ROUNDS: u32 = crate::cluster::client::MAX_REDIRECTS;
/// How long shard channels dropped by Redis are followed: after a reshard (the map
/// already says where the slot went), and after the node's connection was lost
/// (a replica is promoted only after `cluster-node-timeout` and an election).
const FOLLOW_MOVED: Duration = Duration::from_secs(5);
const FOLLOW_LOST: Duration = Duration::from_secs(30);
/// How long the new node's confirmations are waited for.
const CONFIRM: Duration = Duration::from_secs(2);
/// Most nodes a subscriber connection to a cluster's home node is tried on.
const HOME_TRIES: u32 = 3;

/// On a cluster, the session's sharded subscriptions (`SSUBSCRIBE`), so that they
/// follow their slot: Redis drops a shard channel's subscribers (a `sunsubscribe`
/// the client did not ask for) when its slot moves to another node, and they are
/// lost with the node's connection on a failover.
#[derive(Debug, Default)]
pub(super) struct Shards(Option<Box<ShardState>>);

#[derive(Debug, Default)]
pub(super) struct ShardState {
    /// Shard channels Redis confirmed, as named upstream.
    channels: Vec<Bytes>,
    /// Channels of the client's SUNSUBSCRIBEs not confirmed yet.
    asked: Vec<Bytes>,
    /// The client's SUNSUBSCRIBEs without channels not finished yet.
    asked_all: u32,
    /// Channels Redis dropped on its own, with the frame that said so (passed on
    /// if they cannot be subscribed again).
    lost: Vec<(Bytes, Bytes)>,
    /// The connection was lost with shard channels only.
    closed: bool,
}

/// How many replies are still to come on the subscriber connection (on any
/// upstream: the session leaves pub/sub only when none are, so a pipelined
/// UNSUBSCRIBE after the one that left nothing still gets its answer), and the
/// session's channels and patterns as the server will hold them once every
/// request written there is answered. On a cluster, when the home node's
/// connection is lost with none to come (the node failed, or its client was killed), the same
/// subscriptions are made on a new connection to the home node of the moment
/// and the client stays connected: nothing it sent is lost, and messages
/// published meanwhile are missed, as pub/sub delivers at most once. With a
/// reply outstanding the client is disconnected instead, as by Redis.
#[derive(Debug, Default)]
pub(super) struct Home(Option<Box<HomeState>>);

#[derive(Debug, Default)]
struct HomeState {
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
    /// Shard channels (only counted here: [`Shards`] follows them).
    shards: Vec<Bytes>,
    /// Replies still to come for each request written and not yet answered
    /// whole, oldest first (an error reply answers its request whole: Redis
    /// refuses a SUBSCRIBE of two channels with one error).
    awaiting: std::collections::VecDeque<u32>,
    /// A request whose replies are not counted here was written (shard
    /// channels, followed by [`Shards`]): never followed.
    unsure: bool,
    /// The connection was lost with nothing to come: to be followed.
    lost: bool,
}

/// A RESP3 client may run a transaction on its subscriber connection. Inside
/// MULTI every request is queued, a barrier PING too, so the place of a command
/// the proxy answers itself is found by counting instead: the MULTI is sent
/// after every earlier reply has arrived (a barrier), and from there each
/// request gets exactly one reply frame that is not a push, in order (a
/// message, an invalidation or a confirmation is a push). A command the proxy
/// answers itself waits for a marker sent in its place — `ECHO` without its
/// argument, refused at once (and, inside MULTI, as Redis refuses a
/// command while queueing, the transaction is discarded at EXEC) — whose reply
/// is not passed on. After EXEC or DISCARD the session waits for its reply
/// before it sends more (outside MULTI, a SUBSCRIBE's replies are all pushes).
#[derive(Debug)]
pub(super) struct SubTx {
    /// MULTI sent, EXEC or DISCARD not yet.
    in_multi: bool,
    /// The replies still to come, oldest first.
    due: std::collections::VecDeque<Due>,
    /// The database of the last `SELECT` queued in the transaction: the
    /// session's (and the connection's) once EXEC runs it. (EXEC's reply, which
    /// says so, is never skipped: a `CLIENT REPLY SKIP` before it is queued.)
    select: Option<u32>,
    /// Commands the proxy answers itself (`CLIENT SETNAME` …) queued in the
    /// transaction: each stands in it as an `ECHO` of a token of its own, which
    /// Redis queues (its `+QUEUED` is the client's); in EXEC's reply the
    /// token's element is replaced by the command's reply, run then.
    locals: Vec<(Vec<u8>, Queued)>,
}

/// What one reply still to come on a subscriber connection's transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// A request's (passed on).
    Reply,
    /// A marker's (not passed on: every reply before it is in).
    Marker,
    /// EXEC's or DISCARD's: the transaction's end.
    End,
}

/// `CLIENT REPLY SKIP`, sent before a subscribed client's request that it asked
/// not to be answered.
const SKIP_NEXT: &[u8] = b"*3\r\n$6\r\nCLIENT\r\n$5\r\nREPLY\r\n$4\r\nSKIP\r\n";

/// The marker: an `ECHO` without its argument, which Redis refuses before it
/// would queue it (its arity), inside MULTI or not.
const MARKER: &[u8] = b"*1\r\n$4\r\nECHO\r\n";

impl SubTx {
    fn new() -> SubTx {
        SubTx {
            in_multi: true,
            due: Default::default(),
            select: None,
            locals: Vec::new(),
        }
    }

    /// Inside MULTI (EXEC or DISCARD not yet sent).
    pub(super) fn in_multi(&self) -> bool {
        self.in_multi
    }

    /// The database a SELECT queued in the transaction selects.
    pub(super) fn selected(&self) -> Option<u32> {
        self.select
    }

    /// Whether the session must wait before sending more: a marker's reply, or
    /// (EXEC or DISCARD sent) the end of the transaction's replies.
    pub(super) fn waits(&self) -> bool {
        !self.in_multi || self.due.contains(&Due::Marker)
    }

    /// A request written to the connection (`skipped`: its reply is skipped,
    /// see [`SKIP_NEXT`]).
    fn sent(&mut self, args: &dyn ArgList, skipped: bool) {
        // (A DISCARD refused for its arity is queued as refused.)
        let ends = !Descriptor::of(args).tx.in_multi_after(true);
        if !skipped {
            self.due.push_back(if ends { Due::End } else { Due::Reply });
        }
        if ends {
            self.in_multi = false;
        }
    }
}

impl Home {
    /// A request (or several) written to the home node's connection
    /// (`skipped`: their replies, not their pushes, are skipped).
    fn sent(&mut self, bytes: &[u8], skipped: bool) {
        each_request(&Bytes::copy_from_slice(bytes), |_, args| {
            self.sent_one(args, skipped);
            true
        });
    }

    /// One request written to the connection.
    fn sent_one(&mut self, args: &dyn ArgList, skipped: bool) {
        self.0
            .get_or_insert_with(Default::default)
            .sent(args, skipped);
    }

    /// A frame read from the connection.
    fn received(&mut self, frame: &[u8]) {
        if let Some(s) = &mut self.0 {
            if pubsub::answers_request(frame) {
                let whole = frame.first().is_some_and(|&t| t == b'-' || t == b'!');
                match s.awaiting.front_mut() {
                    Some(n) if *n > 1 && !whole => *n -= 1,
                    Some(_) => {
                        s.awaiting.pop_front();
                    }
                    None => {}
                }
            }
        }
    }

    /// The channels and patterns to subscribe again, when the connection may
    /// be replaced (nothing to come on it, something to follow).
    fn settled(&self) -> Option<&HomeState> {
        self.0.as_deref().filter(|s| {
            s.awaiting.is_empty() && !s.unsure && !(s.channels.is_empty() && s.patterns.is_empty())
        })
    }

    fn lose(&mut self) {
        if let Some(s) = &mut self.0 {
            s.lost = true;
        }
    }

    fn lost(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.lost)
    }

    /// Whether replies are still to come for the requests written.
    pub(super) fn awaiting(&self) -> bool {
        self.0.as_ref().is_some_and(|s| !s.awaiting.is_empty())
    }

    /// How many requests written are not yet answered whole.
    pub(super) fn pending(&self) -> usize {
        self.0.as_ref().map_or(0, |s| s.awaiting.len())
    }

    /// The connection was replaced: nothing is to come on the new one.
    fn replaced(&mut self) {
        if let Some(s) = &mut self.0 {
            s.awaiting.clear();
        }
    }
}

impl HomeState {
    /// Counts the replies `args` will get (Redis confirms each channel named,
    /// or each one left, or once with nil) and applies it to the sets.
    fn sent(&mut self, args: &dyn ArgList, skipped: bool) {
        let named = args.count().saturating_sub(1);
        let name = match args.count() {
            0 => Vec::new(),
            _ => args.arg(0).to_ascii_lowercase(),
        };
        let (set, subscribe) = match &name[..] {
            b"subscribe" => (&mut self.channels, true),
            b"psubscribe" => (&mut self.patterns, true),
            b"unsubscribe" => (&mut self.channels, false),
            b"punsubscribe" => (&mut self.patterns, false),
            b"ssubscribe" | b"sunsubscribe" => {
                self.unsure = true;
                (&mut self.shards, name[1] == b's')
            }
            _ => {
                if !skipped {
                    self.awaiting.push_back(1);
                }
                return;
            }
        };
        let replies = match (subscribe, named) {
            (false, 0) => std::mem::take(set).len(),
            _ => named,
        };
        self.awaiting
            .push_back(u32::try_from(replies.max(1)).unwrap_or(u32::MAX));
        for i in 1..args.count() {
            let c = args.arg(i);
            match subscribe {
                true if !set.iter().any(|s| s[..] == *c) => set.push(Bytes::copy_from_slice(c)),
                true => {}
                false => set.retain(|s| s[..] != *c),
            }
        }
    }
}

/// What a subscriber connection adopted from the session's own connection
/// keeps of it ([`Session::adopt_tracking_conn`]).
pub(super) struct Adopted {
    /// A `WATCH` is on it.
    watching: bool,
    /// Tracking was on there at some time (`super::stand_in::Dormant`).
    tracked: bool,
    /// Its tracking, if on.
    tracking: Option<super::tracking::Tracking>,
}

impl Session {
    /// Opens the subscriber connection to `cfg`'s server. On a cluster, a
    /// subscriber connection to the home node (not a shard's, `sharded`) that
    /// cannot connect marks that node down and goes to the next home node, at
    /// most [`HOME_TRIES`] times. Its keyspace notifications (and, `monitor`,
    /// its MONITOR stream) are those of every primary.
    pub(super) async fn open_subscriber(
        &self,
        db: &Database,
        mut cfg: UpstreamConfig,
        sharded: bool,
        monitor: bool,
    ) -> Result<Subscription, UpstreamError> {
        let limit = self.live.config.limits.pubsub_buffer_limit;
        let mut tries = 1;
        loop {
            // Keyspace notifications come from the node of each key: the other
            // primaries of the map of the moment, with this connection's login.
            let satellites = match db.cluster() {
                Some(c) if !sharded => {
                    let (c, home) = (c.clone(), cfg.clone());
                    let nodes: pubsub::Nodes = std::sync::Arc::new(move || {
                        let mut nodes = c.other_primaries(&home.address());
                        for node in &mut nodes {
                            node.username.clone_from(&home.username);
                            node.password.clone_from(&home.password);
                        }
                        nodes
                    });
                    Some(nodes)
                }
                _ => None,
            };
            let result =
                Subscription::open(&cfg, limit, self.state.resp3, satellites, monitor).await;
            let cluster = match (&result, db.cluster()) {
                (Err(UpstreamError::Connect { .. }), Some(c)) if !sharded => c,
                _ => return result,
            };
            cluster.node_failed(&cfg.address());
            let next = self.upstream_cfg(db);
            if tries >= HOME_TRIES || next.address() == cfg.address() {
                return result;
            }
            tracing::info!(session = self.state.id, from = %cfg.address(), to = %next.address(), "subscriber connection goes to the next cluster node");
            cfg = next;
            tries += 1;
        }
    }

    /// A RESP3 session tracking keys on its own connection (or watching keys
    /// there, `Session::owns_watch`) subscribes there, as Redis's client does on
    /// the one connection it has: the connection becomes its subscriber
    /// connection, with tracking on (`Subscribed::tracking`), so what it reads
    /// while subscribed is tracked, `NOLOOP` knows its writes, and the tracking
    /// queries answer as before; a `WATCH` holds for a transaction sent there.
    /// The pushes read before it are queued first. `None`: not such a session (a
    /// new subscriber connection is opened); `Some(None)`: its connection was
    /// lost, and the client is closed, as when a tracking connection is lost;
    /// otherwise the subscription, whether a `WATCH` is on the connection, and
    /// its tracking.
    ///
    /// Not on a cluster, nor with an `auth_passthrough` login (the private
    /// connection stays apart, parked, as before).
    pub(super) async fn adopt_tracking_conn(
        &mut self,
        monitor: bool,
    ) -> Option<Option<(Subscription, Adopted)>> {
        let fits = !monitor
            && self.state.resp3
            && self.login.is_none()
            && self.state.db.cluster().is_none()
            && (self.tracking.is_some()
                || matches!(&self.mode, Mode::Private(p) if p.held.watching || p.tracked));
        if !fits {
            return None;
        }
        let (conn, watching, tracked) = match std::mem::replace(&mut self.mode, Mode::Shared) {
            Mode::Private(Private {
                held:
                    Held {
                        conn: HeldConn::Direct(conn),
                        watching,
                        in_multi: false,
                        ..
                    },
                resp3: true,
                tracked,
                ..
            }) => (conn, watching, tracked),
            other => {
                self.mode = other;
                return None;
            }
        };
        let Some((conn, pushes)) = conn.hand_over().await else {
            if self.tracking.is_none() && !watching {
                // A dormant connection taken back (`stand_in`): nothing is lost
                // but the keys it tracked; a new subscriber connection is opened.
                return None;
            }
            // (Tracking is still on: the client is closed; so it is when its
            // WATCH is lost with the connection.)
            self.on_push(Err(End::Closed));
            self.queue.clear();
            self.done = true;
            return Some(None);
        };
        for push in pushes {
            self.on_push(Ok(push));
        }
        // From here Redis's tracking is the subscriber connection's.
        let tracking = self.tracking.take();
        let limit = self.live.config.limits.pubsub_buffer_limit;
        let adopted = Adopted {
            watching,
            tracked,
            tracking,
        };
        Some(Some((Subscription::adopt(conn, limit), adopted)))
    }

    /// The subscriber connection [`Session::adopt_tracking_conn`] made keeps the
    /// state Redis keeps on it: its tracking (with its mode and redirect) and
    /// its `WATCH`.
    pub(super) fn adopted_keeps(&mut self, adopted: Adopted) {
        if let Some(s) = self.mode.subscribed() {
            if let Some(t) = adopted.tracking {
                s.tracking = true;
                s.bcast = t.bcast;
                s.prefixes = t.prefixes;
                s.redirect = t.redirect.map(|id| (id, t.upstream_redirect));
            }
            s.tracked = adopted.tracked || s.tracking;
            s.watching = adopted.watching;
            self.publish();
        }
    }

    /// A frame (or the end) of the subscriber connection's stream.
    pub(super) fn on_pubsub_frame(&mut self, f: Result<Bytes, End>) {
        let frame = match f {
            Ok(frame) => frame,
            Err(end) => {
                if end == End::Closed && self.follows_shards() {
                    // Failover: subscribed again on the slot's new primary.
                    if let Some(s) = self.mode.subscribed() {
                        s.shards.lose_all();
                    }
                    return;
                }
                if end == End::Closed && self.follows_home() {
                    // Subscribed again on the next home node.
                    if let Some(s) = self.mode.subscribed() {
                        s.home.lose();
                    }
                    return;
                }
                if end == End::Closed
                    && self
                        .mode
                        .subscribed()
                        .is_some_and(|s| s.end_sent == Some(MonitorEnd::Quit) && !s.home.awaiting())
                {
                    // Redis closes a MONITOR connection after its `+OK` to the
                    // `QUIT` sent there: the session answers the client's `QUIT`.
                    self.leave_pubsub();
                    return;
                }
                if end == End::Overflow {
                    tracing::warn!(
                        session = self.state.id,
                        peer = %self.state.peer,
                        limit = self.live.config.limits.pubsub_buffer_limit,
                        "disconnecting slow subscriber: pub/sub output buffer limit reached"
                    );
                } else {
                    // The client's subscriptions are gone with the connection; as
                    // with Redis itself, the client's connection closes, so its
                    // library reconnects and subscribes again.
                    tracing::info!(
                        session = self.state.id,
                        "subscriber upstream connection closed; closing the client"
                    );
                }
                self.leave_pubsub();
                self.queue.clear();
                self.done = true;
                return;
            }
        };
        let cluster = self.state.db.cluster().is_some();
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        let barrier = s.barrier.as_ref().is_some_and(|b| is_barrier(b, &frame));
        if let Some(c) = pubsub::confirmation(&frame) {
            let none = s.counts == [0, 0];
            s.counts[c.shard as usize] = c.count;
            if c.shard && cluster && s.shards.note(&frame, c.subscribe) {
                // Dropped by Redis (the slot moved): followed, unseen by the client
                // (and no request's reply).
                return;
            }
            if s.kept() && none != (s.counts == [0, 0]) {
                // Kept, in or out of pub/sub: CLIENT LIST's flags change.
                self.publish();
            }
        }
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if !(s.monitor && pubsub::is_monitor_line(&frame)) {
            s.home.received(&frame);
            if s.end_sent.is_some() && !s.home.awaiting() {
                // Redis's `+RESET` (or `+OK` to `QUIT`) on a MONITOR connection:
                // the session's own follows (`monitor_end`).
                return;
            }
        }
        let mut selected = None;
        let mut locals = Vec::new();
        if let Some(tx) = s.tx.as_mut().filter(|_| !frame.starts_with(b">")) {
            let due = tx.due.pop_front();
            if due == Some(Due::End) {
                // EXEC's reply (or DISCARD's): a queued SELECT ran if the
                // transaction did (an array, not a conflict's null or an error),
                // and so did what the proxy queued.
                let ran = frame.starts_with(b"*") && !frame.starts_with(b"*-1");
                selected = tx.select.filter(|_| ran);
                if ran {
                    locals = std::mem::take(&mut tx.locals);
                }
            }
            let marker = due == Some(Due::Marker);
            if !tx.in_multi && tx.due.is_empty() {
                s.tx = None;
            }
            if marker {
                // Every reply to what the client sent before is in the queue.
                s.barrier_passed = true;
                return;
            }
        }
        if let Some(index) = selected {
            s.db = index;
        }
        if let Some(db) = selected.and_then(|i| self.live.router.get(i64::from(i))) {
            self.state.db = db.clone();
        }
        let frame = match locals.is_empty() {
            true => frame,
            false => self.splice_subscribed_exec(frame, locals),
        };
        let (frame, silent) = self.tracking_on_subscriber_frame(frame);
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        // No subscriptions left and nothing more to come on the connection (a
        // pipelined UNSUBSCRIBE after the one that left none is still answered
        // there, and so is a request after it): back to normal request/reply.
        let last = !s.monitor
            && s.counts == [0, 0]
            && !s.home.awaiting()
            && (!s.kept() || !self.state.resp3)
            && pubsub::answers_request(&frame);
        if barrier {
            // Every reply to what the client sent before is in the queue.
            s.barrier = None;
            s.barrier_passed = true;
            if last {
                self.leave_pubsub();
            }
            return;
        }
        if last {
            self.leave_pubsub();
        }
        if silent {
            // (CLIENT REPLY SKIP before a tracking request: Redis skips nothing
            // there.)
            return;
        }
        if self.hold_sub_bcast(&frame) {
            return;
        }
        if self.reply_off
            && pubsub::answers_request(&frame)
            && pubsub::confirmation(&frame).is_none()
        {
            // CLIENT REPLY OFF: a reply (a PONG, an error) is dropped; pub/sub
            // confirmations and messages are pushes, which Redis sends anyway,
            // also those it wrote between the elements of EXEC's array.
            let pushes = reply::pushes_within(&frame);
            if !pushes.is_empty() {
                self.deliver(Bytes::from(pushes));
            }
            return;
        }
        self.deliver(frame);
    }

    /// Queues a frame of the subscriber connection for the client.
    fn deliver(&mut self, frame: Bytes) {
        let frame = match &self.state.db.config.upstream.key_prefix {
            None => frame,
            Some(p) => match super::prefix::pubsub_frame(p, frame) {
                Some(f) => f,
                // A notification about another database's key.
                None => return,
            },
        };
        self.queue.push_back(Pending::Ready(frame));
    }

    /// Writes a request to the subscriber connection; `unsubscribes`: it is an
    /// UNSUBSCRIBE-family command; `skip`: the client asked not to get its reply
    /// (CLIENT REPLY SKIP, RESP3), which Redis then skips ([`SKIP_NEXT`] sent
    /// before it; pushes still come).
    pub(super) async fn send_to_subscriber(
        &mut self,
        bytes: &Bytes,
        unsubscribes: bool,
        skip: bool,
    ) {
        let cluster = self.state.db.cluster().is_some();
        // (A RESP2 subscriber's WATCH, EXEC … are refused by Redis.)
        let resp3 = self.state.resp3;
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        s.revived = false;
        if unsubscribes && cluster {
            s.shards.asked(bytes);
        }
        let tracked = (s.tracking, s.bcast);
        let mut unwatch_parked = false;
        each_request(bytes, |_, args| {
            s.home.sent_one(args, skip);
            if !resp3 && args.arg(0).eq_ignore_ascii_case(b"EXEC") {
                // Refused there (RESP2 pub/sub context), and Redis's refusal of
                // an EXEC discards the transaction: the WATCH of the connection
                // parked meanwhile ends too, as on Redis's one connection.
                unwatch_parked = s.parked.as_ref().is_some_and(|p| p.held.watching);
            }
            if resp3 {
                let name = args.arg(0);
                let in_multi = s.tx.as_ref().is_some_and(|t| t.in_multi);
                let op = Descriptor::of(args).tx;
                if op == TxOp::Watch && !in_multi {
                    s.watching = true;
                } else if op.ends_watch(in_multi) {
                    s.watching = false;
                } else if name.eq_ignore_ascii_case(b"CLIENT")
                    && args.count() > 2
                    && args.arg(1).eq_ignore_ascii_case(b"TRACKING")
                {
                    // (An ON that Redis refuses leaves the flag set: the
                    // connection is kept a little longer than needed, harmless.)
                    // (Nor does Redis let an ON change the mode of tracking
                    // that is on.)
                    let mode = args.arg(2);
                    if mode.eq_ignore_ascii_case(b"ON") && !s.tracking {
                        s.tracking = true;
                        s.tracked = true;
                        s.bcast =
                            (3..args.count()).any(|i| args.arg(i).eq_ignore_ascii_case(b"BCAST"));
                    } else if mode.eq_ignore_ascii_case(b"OFF") {
                        s.tracking = false;
                    }
                }
            }
            if let Some(tx) = &mut s.tx {
                tx.sent(args, skip);
            }
            true
        });
        if s.tx
            .as_ref()
            .is_some_and(|tx| !tx.in_multi && tx.due.is_empty())
        {
            // (EXEC's reply skipped.)
            s.tx = None;
        }
        let switched = (s.tracking, s.bcast) != tracked;
        if unwatch_parked {
            if let Some(p) = s.parked.as_mut() {
                p.held.watching = false;
            }
        }
        let sent = match skip {
            true => s.sub.send(&[SKIP_NEXT, bytes].concat()).await,
            false => s.sub.send(bytes).await,
        };
        if unwatch_parked {
            self.send_parked(b"*1\r\n$7\r\nUNWATCH\r\n");
        }
        if switched {
            // CLIENT LIST's flags.
            self.publish();
        }
        if sent.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
    }

    /// A RESP3 subscriber's `HELLO 2` (answered by the proxy once the barrier
    /// after it has passed): Redis's client stays subscribed, in RESP2 from
    /// then on, so the subscriber connection switches too (once; Redis's reply
    /// skipped: the client gets the proxy's, with its session id). Frames
    /// before the switch reach the client as RESP3, as from Redis before its
    /// `HELLO` reply; the barrier's and all later ones are RESP2.
    pub(super) async fn subscriber_to_resp2(&mut self) {
        const HELLO_2: &[u8] = b"*2\r\n$5\r\nHELLO\r\n$1\r\n2\r\n";
        let Some(s) = self.mode.subscribed().filter(|s| !s.to_resp2) else {
            return;
        };
        s.to_resp2 = true;
        self.send_reply_skipped(HELLO_2).await;
    }

    /// A RESP3 subscriber's `SELECT` of database `index`, which the subscriber
    /// connection can follow (`select`: the upstream's `SELECT`, its reply
    /// skipped), sent before the barrier that orders the session's own reply:
    /// the connection is on that database from then on.
    pub(super) async fn subscriber_select(&mut self, index: u32, select: &[u8]) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        s.db = index;
        self.send_reply_skipped(select).await;
    }

    /// A SELECT inside the transaction on the subscriber connection
    /// (`Session::subscriber_select_queued`): sent there (Redis queues it; its
    /// `+QUEUED` is the client's), to be the session's database once EXEC runs
    /// the transaction.
    pub(super) async fn queue_subscriber_select(
        &mut self,
        index: u32,
        select: Vec<u8>,
        skip: bool,
    ) {
        if let Some(tx) = self.mode.subscribed().and_then(|s| s.tx.as_mut()) {
            tx.select = Some(index);
        }
        self.send_to_subscriber(&Bytes::from(select), false, skip)
            .await;
    }

    /// A command the proxy answers itself (`q`), inside the transaction on the
    /// subscriber connection: an `ECHO` of a token stands in for it there (see
    /// [`SubTx::locals`]).
    pub(super) async fn queue_on_subscriber(&mut self, q: Queued, skip: bool) {
        let Some(tx) = self.mode.subscribed().and_then(|s| s.tx.as_mut()) else {
            return;
        };
        // (Random, so that no element of the client's own can be taken for it.)
        let token = format!("redis-sidecar:queued:{:016x}", fastrand::u64(..));
        let mut element = Vec::new();
        reply::bulk(&mut element, token.as_bytes());
        tx.locals.push((element, q));
        let mut echo = Vec::new();
        encode_command(&[&b"ECHO"[..], token.as_bytes()], &mut echo);
        self.send_to_subscriber(&Bytes::from(echo), false, skip)
            .await;
    }

    /// EXEC's reply (it ran the transaction) with each token's element replaced
    /// by the reply of the command it stands for, run now, in order.
    fn splice_subscribed_exec(&mut self, frame: Bytes, locals: Vec<(Vec<u8>, Queued)>) -> Bytes {
        // (A message the transaction published to the client itself comes
        // between the elements, as from Redis: passed on in its place.)
        let Some(items) = reply::items(&frame).filter(|_| frame.starts_with(b"*")) else {
            return frame;
        };
        let mut locals = locals.into_iter().peekable();
        let mut out = Vec::with_capacity(frame.len() + 64);
        reply::array_header(&mut out, items.iter().filter(|(_, push)| !push).count());
        // (What is queued this way never closes the client.)
        let mut close = false;
        for (e, push) in items {
            match locals.next_if(|(token, _)| !push && token[..] == *e) {
                Some((_, q)) => {
                    let r = self.run_queued(q, &mut close);
                    out.extend_from_slice(&r);
                }
                None => out.extend_from_slice(e),
            }
        }
        self.publish();
        Bytes::from(out)
    }

    /// Writes the proxy's own `request` on the subscriber connection, its reply
    /// skipped by Redis ([`SKIP_NEXT`]).
    async fn send_reply_skipped(&mut self, request: &[u8]) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if s.sub.send(&[SKIP_NEXT, request].concat()).await.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
    }

    /// A MULTI is about to be sent on the subscriber connection (RESP3): `true`
    /// once every earlier reply has arrived and the transaction's replies are
    /// counted from here ([`SubTx`]); `false`: it waits (`stalled`).
    pub(super) async fn multi_on_subscriber(&mut self) -> bool {
        if matches!(self.mode.subscribed(), Some(s) if s.tx.is_some()) {
            // A nested MULTI: refused by Redis, one reply like any other.
            return true;
        }
        if !self.barrier_passed().await {
            return false;
        }
        if let Some(s) = self.mode.subscribed() {
            s.tx = Some(Box::new(SubTx::new()));
        }
        true
    }

    /// Whether the session is inside a transaction on its subscriber connection.
    pub(super) fn multi_while_subscribed(&self) -> bool {
        matches!(&self.mode, super::mode::Mode::Subscribed(s) if s.tx.as_ref().is_some_and(|t| t.in_multi))
    }

    /// Whether the session waits for the end of a transaction's replies on its
    /// subscriber connection before it sends more.
    pub(super) fn after_exec_while_subscribed(&self) -> bool {
        matches!(&self.mode, super::mode::Mode::Subscribed(s) if s.tx.as_ref().is_some_and(|t| !t.in_multi))
    }

    /// A `RESET` or `QUIT` on a MONITOR connection: sent there first (once),
    /// since Redis writes the stream line of a request after its reply, so the
    /// line of the last request before it comes only after that reply. Redis
    /// answers after the line; the reply is counted like any other (the session's
    /// own waits for it, [`Session::barrier_passed`]) and not passed on, nor the
    /// close that follows a `QUIT`. Other monitors see the command, as they see it
    /// from a client of Redis.
    pub(super) async fn monitor_end(&mut self, end: MonitorEnd) {
        let Some(s) = self
            .mode
            .subscribed()
            .filter(|s| s.monitor && s.end_sent.is_none())
        else {
            return;
        };
        let command: &[u8] = match end {
            MonitorEnd::Reset => b"*1\r\n$5\r\nRESET\r\n",
            MonitorEnd::Quit => b"*1\r\n$4\r\nQUIT\r\n",
        };
        s.end_sent = Some(end);
        s.home.sent(command, false);
        if s.sub.send(command).await.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
    }

    /// Before a command the proxy answers itself while subscribed: `true` when it
    /// may be answered now; otherwise a barrier PING (with a tag no client can
    /// guess) is sent on the subscriber connection and the command waits for its
    /// reply, which marks the point where every earlier request has been answered.
    pub(super) async fn barrier_passed(&mut self) -> bool {
        let Some(s) = self.mode.subscribed() else {
            return true;
        };
        if s.monitor {
            // (A MONITOR stream would show a PING to the client, and to every
            // other monitor: the replies still to come are counted instead.)
            return !s.home.awaiting();
        }
        if std::mem::take(&mut s.barrier_passed) {
            return true;
        }
        if let Some(tx) = &mut s.tx {
            if tx.due.contains(&Due::Marker) {
                return false;
            }
            tx.due.push_back(Due::Marker);
            s.home.sent(MARKER, false);
            if s.sub.send(MARKER).await.is_err() {
                self.on_pubsub_frame(Err(End::Closed));
            }
            return false;
        }
        let tag = format!("redis-sidecar-barrier-{:016x}", fastrand::u64(..));
        let mut expected = Vec::new();
        reply::bulk(&mut expected, tag.as_bytes());
        let mut ping = Vec::new();
        encode_command(&[&b"PING"[..], tag.as_bytes()], &mut ping);
        s.barrier = Some(Bytes::from(expected));
        s.home.sent(&ping, false);
        if s.sub.send(&ping).await.is_err() {
            self.on_pubsub_frame(Err(End::Closed));
        }
        false
    }
}

impl Shards {
    /// The state, made on first use (only cluster subscribers have one).
    fn state(&mut self) -> &mut ShardState {
        self.0.get_or_insert_with(Default::default)
    }

    fn note(&mut self, frame: &Bytes, subscribe: bool) -> bool {
        self.state().note(frame, subscribe)
    }

    fn asked(&mut self, bytes: &[u8]) {
        self.state().asked(bytes);
    }

    /// The connection was lost: every channel is to be subscribed again.
    fn lose_all(&mut self) {
        let s = self.state();
        let channels = s.channels.clone();
        s.lost
            .extend(channels.into_iter().map(|c| (c, Bytes::new())));
        s.closed = true;
    }

    fn has_lost(&self) -> bool {
        self.0.as_ref().is_some_and(|s| !s.lost.is_empty())
    }

    fn any(&self) -> bool {
        self.0.as_ref().is_some_and(|s| !s.channels.is_empty())
    }

    fn closed(&self) -> bool {
        self.0.as_ref().is_some_and(|s| s.closed)
    }

    /// The channels to subscribe again, and whether the connection was lost.
    fn take_lost(&mut self) -> (Vec<(Bytes, Bytes)>, bool) {
        match &mut self.0 {
            Some(s) => (std::mem::take(&mut s.lost), std::mem::take(&mut s.closed)),
            None => (Vec::new(), false),
        }
    }

    /// The channels subscribed on a new connection.
    fn set(&mut self, channels: Vec<Bytes>) {
        self.state().channels = channels;
    }
}

impl ShardState {
    /// Notes a shard channel's confirmation; `true` for a `sunsubscribe` the
    /// client did not ask for (then in `lost`).
    fn note(&mut self, frame: &Bytes, subscribe: bool) -> bool {
        let Some(channel) = pubsub::confirmed_channel(frame) else {
            // SUNSUBSCRIBE without subscriptions: nil.
            self.asked_all = self.asked_all.saturating_sub(1);
            return false;
        };
        let channel = Bytes::copy_from_slice(channel);
        if subscribe {
            if !self.channels.contains(&channel) {
                self.channels.push(channel);
            }
            return false;
        }
        self.channels.retain(|c| *c != channel);
        if let Some(i) = self.asked.iter().position(|c| *c == channel) {
            self.asked.swap_remove(i);
            return false;
        }
        if self.asked_all > 0 {
            if self.channels.is_empty() {
                self.asked_all -= 1;
            }
            return false;
        }
        self.lost.push((channel, frame.clone()));
        true
    }

    /// The client sent an UNSUBSCRIBE-family request: SUNSUBSCRIBE's channels
    /// (or all) are expected to be confirmed.
    fn asked(&mut self, bytes: &[u8]) {
        // (A copy: only a cluster subscriber's UNSUBSCRIBE-family requests come here.)
        each_request(&Bytes::copy_from_slice(bytes), |_, args| {
            if args.count() > 0 && args.arg(0).eq_ignore_ascii_case(b"SUNSUBSCRIBE") {
                if args.count() < 2 {
                    self.asked_all += 1;
                }
                for i in 1..args.count() {
                    self.asked.push(Bytes::copy_from_slice(args.arg(i)));
                }
            }
            true
        });
    }
}

impl Session {
    /// `f`, then any frames taken off the connection with held `BCAST`
    /// invalidations that it let follow (`Session::sub_bcast_answered`).
    pub(super) fn pubsub_frames(&mut self, f: Result<Bytes, End>) {
        let mut next = Some(f);
        while let Some(f) = next.take() {
            let pending = self.mode.subscribed().map_or(0, |s| s.home.pending());
            self.on_pubsub_frame(f);
            next = self.sub_bcast_answered(pending);
        }
    }

    /// A frame (or the end) of the subscriber connection's stream; on a cluster,
    /// shard channels Redis dropped are then followed to their slot's new node.
    pub(super) async fn on_pubsub(&mut self, f: Result<Bytes, End>) {
        self.pubsub_frames(f);
        let lost = self.mode.subscribed().is_some_and(|s| s.shards.has_lost());
        if lost {
            // Boxed: rare, and its future would otherwise be part of every
            // session's task.
            Box::pin(self.follow_shards()).await;
        }
        if self.mode.subscribed().is_some_and(|s| s.home.lost()) {
            Box::pin(self.follow_home()).await;
        }
    }

    /// Whether a lost subscriber connection is replaced (see [`Home`]): on a
    /// cluster, with channels or patterns and no shard channels, nothing to
    /// come on it, no MONITOR.
    fn follows_home(&mut self) -> bool {
        let cluster = self.state.db.cluster().is_some();
        self.mode.subscribed().is_some_and(|s| {
            cluster
                && !s.monitor
                && s.counts[1] == 0
                && !s.shards.any()
                && s.barrier.is_none()
                && !s.holds_transaction()
                && s.home.settled().is_some()
        })
    }

    /// Opens a subscriber connection to the cluster's home node of the moment
    /// (the next one if it cannot be reached), subscribes the session's
    /// channels and patterns there, and replaces the lost connection with it;
    /// their confirmations are kept from the client (it is still subscribed),
    /// messages read meanwhile are passed on. Within bounded time and rounds,
    /// else the client is disconnected, as without a cluster.
    async fn follow_home(&mut self) {
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        let Some(home) = s.home.0.as_deref_mut() else {
            return;
        };
        home.lost = false;
        let (channels, patterns) = (home.channels.clone(), home.patterns.clone());
        let db = self.state.db.clone();
        let bound = db.config.upstream.connect_timeout;
        let end = tokio::time::Instant::now() + FOLLOW_MOVED;
        for round in 0..ROUNDS {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if tokio::time::Instant::now() >= end {
                break;
            }
            let cfg = self.upstream_cfg(&db);
            let node = cfg.address();
            let opened = tokio::time::timeout(bound, self.open_subscriber(&db, cfg, false, false));
            let Ok(Ok(mut sub)) = opened.await else {
                continue;
            };
            let Some((count, early)) = subscribe_again(&mut sub, &channels, &patterns).await else {
                continue;
            };
            tracing::info!(session = self.state.id, %node, channels = channels.len(), patterns = patterns.len(), "subscriber connection lost; subscribed again on the home node");
            if let Some(s) = self.mode.subscribed() {
                s.sub = sub;
                s.counts[0] = count;
                s.home.replaced();
            }
            for frame in early {
                self.deliver(frame);
            }
            return;
        }
        if let Some(s) = self.mode.subscribed() {
            s.home = Home::default();
        }
        self.on_pubsub_frame(Err(End::Closed));
    }

    /// Whether a lost subscriber connection is followed: on a cluster, with shard
    /// channels only.
    fn follows_shards(&mut self) -> bool {
        let cluster = self.state.db.cluster().is_some();
        self.mode.subscribed().is_some_and(|s| {
            cluster && !s.monitor && s.counts[0] == 0 && s.shards.any() && !s.holds_transaction()
        })
    }

    /// Subscribes the shard channels Redis dropped (or that were lost with the
    /// connection) again on the new primary of their slot, on a new subscriber
    /// connection that replaces the old one, with their confirmations kept from
    /// the client (it asked to be subscribed, and still is). Only when nothing
    /// else is subscribed on the old connection; within bounded time and rounds,
    /// else the client gets the `sunsubscribe` (or, with the connection lost, is
    /// disconnected), as from Redis.
    async fn follow_shards(&mut self) {
        // Redis drops every channel of the slot at once: take them all (what
        // arrives meanwhile is handled as usual, up to a bound).
        for _ in 0..64 {
            let Some(s) = self.mode.subscribed() else {
                return;
            };
            if s.shards.closed() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(20), s.sub.next()).await {
                Ok(f) => self.on_pubsub_frame(f),
                Err(_) => break,
            }
        }
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        let (lost, closed) = s.shards.take_lost();
        // Replies still due on the old connection (a request, or the barrier, in
        // flight when it closed) would never come on a new one: then the client
        // is not followed but told, as by Redis (disconnected, or the
        // sunsubscribe passed on).
        let quiet = !s.home.awaiting() && s.barrier.is_none();
        let followed = if quiet && (closed || s.counts == [0, 0]) && !s.holds_transaction() {
            self.resubscribe(&lost, closed).await
        } else {
            false
        };
        if followed {
            return;
        }
        if closed {
            // As without a cluster: the client is disconnected.
            if let Some(s) = self.mode.subscribed() {
                s.shards = Shards::default();
            }
            self.on_pubsub_frame(Err(End::Closed));
            return;
        }
        tracing::info!(session = self.state.id, channels = lost.len(), "shard channels dropped by Redis could not be subscribed again; passing the sunsubscribe on");
        for (_, frame) in lost {
            self.deliver(frame);
        }
        let Some(s) = self.mode.subscribed() else {
            return;
        };
        if s.counts == [0, 0] && !s.home.awaiting() {
            self.leave_pubsub();
        }
    }

    /// Opens a subscriber connection to the primary now serving the first of
    /// `lost`'s slot and subscribes them there (see [`Session::follow_shards`]);
    /// `true` once it replaced the session's connection.
    async fn resubscribe(&mut self, lost: &[(Bytes, Bytes)], closed: bool) -> bool {
        let Some(cluster) = self.state.db.cluster().cloned() else {
            return false;
        };
        let Some((first, _)) = lost.first() else {
            return true;
        };
        let slot = crate::cluster::key_slot(first);
        let primary = |c: &crate::cluster::Cluster| {
            c.topology()
                .and_then(|t| t.map.shard(slot).map(|s| s.primary.addr.clone()))
        };
        let bound = self.state.db.config.upstream.connect_timeout;
        let end = tokio::time::Instant::now() + if closed { FOLLOW_LOST } else { FOLLOW_MOVED };
        let rounds = if closed { 4 * ROUNDS } else { ROUNDS };
        for round in 0..rounds {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            if tokio::time::Instant::now() >= end {
                break;
            }
            let seen = cluster.topology().map_or(0, |t| t.generation);
            let _ = tokio::time::timeout(bound, cluster.refresh(seen)).await;
            let Some(addr) = primary(&cluster) else {
                continue;
            };
            let Some((host, port)) = crate::cluster::map::split_addr(&addr) else {
                return false;
            };
            let mut cfg = self.upstream_cfg(&self.state.db);
            cfg.host = host;
            cfg.port = port;
            let limit = self.live.config.limits.pubsub_buffer_limit;
            let Ok(Ok(mut sub)) = tokio::time::timeout(
                bound,
                Subscription::open(&cfg, limit, self.state.resp3, None, false),
            )
            .await
            else {
                continue;
            };
            if let Some(count) = subscribe_all(&mut sub, lost).await {
                tracing::info!(session = self.state.id, node = %addr, channels = lost.len(), "shard channels followed their slot");
                if let Some(s) = self.mode.subscribed() {
                    s.sub = sub;
                    s.counts = [0, count];
                    s.home.replaced();
                    s.shards.set(lost.iter().map(|(c, _)| c.clone()).collect());
                }
                return true;
            }
        }
        false
    }
}

/// Subscribes every channel of `lost` on `sub` (one SSUBSCRIBE each) and waits
/// for their confirmations; the shard count after the last, or `None` if one was
/// refused (`-MOVED`: the map is not there yet) or did not come in time.
async fn subscribe_all(sub: &mut Subscription, lost: &[(Bytes, Bytes)]) -> Option<i64> {
    let mut out = Vec::new();
    for (c, _) in lost {
        encode_command(&[&b"SSUBSCRIBE"[..], c], &mut out);
    }
    sub.send(&out).await.ok()?;
    let mut count = 0;
    let until = tokio::time::Instant::now() + CONFIRM;
    for _ in lost {
        let frame = tokio::time::timeout_at(until, sub.next())
            .await
            .ok()?
            .ok()?;
        // Nothing is published to them on this connection before their
        // confirmations: each frame is one.
        let c = pubsub::confirmation(&frame).filter(|c| c.subscribe && c.shard)?;
        count = c.count;
    }
    Some(count)
}

/// Subscribes `channels` and `patterns` on `sub` (a SUBSCRIBE and a
/// PSUBSCRIBE) and waits for their confirmations: the count after the last,
/// and the messages that came in between (published to a channel confirmed
/// first), or `None` if anything else came, or not in time.
async fn subscribe_again(
    sub: &mut Subscription,
    channels: &[Bytes],
    patterns: &[Bytes],
) -> Option<(i64, Vec<Bytes>)> {
    let mut out = Vec::new();
    for (kind, names) in [(&b"SUBSCRIBE"[..], channels), (b"PSUBSCRIBE", patterns)] {
        if !names.is_empty() {
            let args: Vec<&[u8]> = std::iter::once(kind)
                .chain(names.iter().map(|n| &n[..]))
                .collect();
            encode_command(&args, &mut out);
        }
    }
    sub.send(&out).await.ok()?;
    let (mut count, mut early) = (0, Vec::new());
    let mut left = channels.len() + patterns.len();
    let until = tokio::time::Instant::now() + CONFIRM;
    // (Bounded: a flood of messages meanwhile gives up.)
    for _ in 0..left + 1024 {
        if left == 0 {
            return Some((count, early));
        }
        let frame = tokio::time::timeout_at(until, sub.next())
            .await
            .ok()?
            .ok()?;
        match pubsub::confirmation(&frame) {
            Some(c) if c.subscribe && !c.shard => {
                count = c.count;
                left -= 1;
            }
            _ if !pubsub::answers_request(&frame) => early.push(frame),
            _ => return None,
        }
    }
    (left == 0).then_some((count, early))
}

/// Whether `frame` answers the barrier PING whose tag is the bulk string `tag`:
/// the bulk string itself (RESP3, or a connection no longer subscribed when
/// Redis read the PING: an UNSUBSCRIBE before it left nothing), or a RESP2
/// subscriber's pub/sub-style `["pong", tag]`.
fn is_barrier(tag: &[u8], frame: &[u8]) -> bool {
    frame == tag
        || frame
            .strip_prefix(&b"*2\r\n$4\r\npong\r\n"[..])
            .is_some_and(|rest| rest == tag)
}

/// Redis's confirmations for an UNSUBSCRIBE-family command from a client with no
/// subscriptions: one per channel named, or one with a nil channel.
pub(super) fn unsubscribed<L: ArgList + ?Sized>(args: &L, resp3: bool) -> Vec<u8> {
    let kind = args.arg(0).to_ascii_lowercase();
    let mut out = Vec::new();
    let mut one = |channel: Option<&[u8]>| {
        out.extend_from_slice(if resp3 { b">3\r\n" } else { b"*3\r\n" });
        reply::bulk(&mut out, &kind);
        match channel {
            Some(c) => reply::bulk(&mut out, c),
            None => reply::nil(&mut out, resp3),
        }
        reply::integer(&mut out, 0);
    };
    if args.count() < 2 {
        one(None);
    } else {
        for i in 1..args.count() {
            one(Some(args.arg(i)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Home, Shards};
    use bytes::Bytes;

    fn cmd(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len());
        for a in args {
            out.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        out.into_bytes()
    }

    #[test]
    fn the_home_connection_is_followed_only_with_no_reply_to_come() {
        let mut h = Home::default();
        h.sent(&cmd(&["SUBSCRIBE", "a", "b", "a"]), false);
        // Three confirmations to come (one per channel named).
        assert!(h.settled().is_none());
        h.received(&conf("subscribe", "a", 1));
        h.received(&conf("subscribe", "b", 2));
        // A message is not a reply.
        h.received(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$1\r\nm\r\n");
        assert!(h.settled().is_none());
        h.received(&conf("subscribe", "a", 2));
        let s = h.settled().expect("nothing to come");
        assert_eq!(s.channels, [Bytes::from("a"), Bytes::from("b")]);
        // PSUBSCRIBE and a PING, pipelined.
        let mut two = cmd(&["psubscribe", "p*"]);
        two.extend(cmd(&["PING"]));
        h.sent(&two, false);
        h.received(b"*3\r\n$10\r\npsubscribe\r\n$2\r\np*\r\n:3\r\n");
        assert!(h.settled().is_none());
        h.received(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
        assert_eq!(h.settled().map(|s| s.patterns.len()), Some(1));
        // UNSUBSCRIBE without channels: one confirmation per channel held.
        h.sent(&cmd(&["UNSUBSCRIBE"]), false);
        h.received(&conf("unsubscribe", "a", 2));
        assert!(h.settled().is_none());
        h.received(&conf("unsubscribe", "b", 1));
        let s = h.settled().expect("the pattern is left");
        assert!(s.channels.is_empty());
        // PUNSUBSCRIBE of the last pattern: nothing to follow.
        h.sent(&cmd(&["PUNSUBSCRIBE", "p*"]), false);
        h.received(b"*3\r\n$12\r\npunsubscribe\r\n$2\r\np*\r\n:0\r\n");
        assert!(h.settled().is_none());
        // A shard channel on the connection: never followed here.
        h.sent(&cmd(&["SUBSCRIBE", "c"]), false);
        h.received(&conf("subscribe", "c", 1));
        assert!(h.settled().is_some());
        h.sent(&cmd(&["SSUBSCRIBE", "d"]), false);
        h.received(&conf("ssubscribe", "d", 1));
        assert!(h.settled().is_none());
    }

    #[test]
    fn replies_to_come_are_counted_per_request() {
        let mut h = Home::default();
        assert!(!h.awaiting());
        // UNSUBSCRIBE then PUNSUBSCRIBE with nothing held: one reply each (nil).
        let mut two = cmd(&["UNSUBSCRIBE"]);
        two.extend(cmd(&["PUNSUBSCRIBE"]));
        h.sent(&two, false);
        h.received(b"*3\r\n$11\r\nunsubscribe\r\n$-1\r\n:0\r\n");
        assert!(h.awaiting(), "the PUNSUBSCRIBE's reply is still to come");
        h.received(b"*3\r\n$12\r\npunsubscribe\r\n$-1\r\n:0\r\n");
        assert!(!h.awaiting());
        // An error answers its request whole (two channels named, one error),
        // and the next request's replies are counted after it.
        let mut two = cmd(&["SUBSCRIBE", "a", "b"]);
        two.extend(cmd(&["SSUBSCRIBE", "x", "y"]));
        h.sent(&two, false);
        h.received(b"-NOPERM this user has no permissions to access one of the channels\r\n");
        assert!(h.awaiting());
        h.received(&conf("ssubscribe", "x", 1));
        assert!(h.awaiting(), "one shard confirmation to come");
        h.received(&conf("ssubscribe", "y", 2));
        assert!(!h.awaiting());
    }

    fn conf(kind: &str, channel: &str, count: i64) -> Bytes {
        Bytes::from(format!(
            "*3\r\n${}\r\n{kind}\r\n${}\r\n{channel}\r\n:{count}\r\n",
            kind.len(),
            channel.len()
        ))
    }

    #[test]
    fn only_a_sunsubscribe_the_client_did_not_ask_for_is_followed() {
        let mut s = Shards::default();
        assert!(!s.note(&conf("ssubscribe", "a", 1), true));
        assert!(!s.note(&conf("ssubscribe", "b", 2), true));
        s.asked(b"*2\r\n$12\r\nsunsubscribe\r\n$1\r\na\r\n");
        assert!(!s.note(&conf("sunsubscribe", "a", 1), false));
        // Redis's own (the slot moved).
        assert!(s.note(&conf("sunsubscribe", "b", 0), false));
        assert!(s.has_lost());
        let (lost, closed) = s.take_lost();
        assert_eq!(lost.len(), 1);
        assert_eq!(lost[0].0.as_ref(), b"b");
        assert!(!closed);
        // SUNSUBSCRIBE without channels covers every confirmation until the last.
        assert!(!s.note(&conf("ssubscribe", "c", 1), true));
        assert!(!s.note(&conf("ssubscribe", "d", 2), true));
        s.asked(b"*1\r\n$12\r\nSUNSUBSCRIBE\r\n");
        assert!(!s.note(&conf("sunsubscribe", "c", 1), false));
        assert!(!s.note(&conf("sunsubscribe", "d", 0), false));
        assert!(!s.any());
        assert!(!s.has_lost());
        // The connection lost: every channel goes again.
        assert!(!s.note(&conf("ssubscribe", "e", 1), true));
        s.lose_all();
        assert!(s.closed());
        assert_eq!(s.take_lost().0.len(), 1);
    }
}
